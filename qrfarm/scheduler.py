"""The scheduler's loop: each round re-sends due retries and lost jobs, finalizes
jobs whose worker died, advances prefetches, and writes what it changed to the
audit trail; webhooks are delivered on a thread of their own.

The entry point (``qrfarm scheduler``) builds what it needs and calls ``run``;
this module imports only the parts it drives (jobs, workflow, notify, models),
never the faces or the services.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from .delivery import relay
from .jobs.dispatch import Dispatcher
from .jobs.policy import JobPolicy
from .jobs.submit import SubmitRules
from .jobs.sweeper import sweep
from .notify.delivery import DeliveryPolicy, deliver_due, run_deliveries
from .workflow import audit, prefetch, retrieve

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SchedulerSetup:
    """What a scheduler needs, made by its entry point."""

    sessions: sessionmaker[Session]
    dispatcher: Dispatcher
    policy: JobPolicy
    rules: SubmitRules
    interval_s: float
    audit_retention_days: int
    # Touched at each round: what `qrfarm probe scheduler` reads.
    heartbeat: Path
    deliveries: DeliveryPolicy | None = None


def run(setup: SchedulerSetup, *, once: bool = False, stop: threading.Event | None = None) -> None:
    """Rounds every ``interval_s`` until ``stop`` is set (with ``once``: one round)."""
    stop = stop or threading.Event()
    deliveries = _start_webhook_delivery(setup, stop, once)
    setup.heartbeat.parent.mkdir(parents=True, exist_ok=True)
    try:
        while True:
            run_round(setup)
            if once or stop.wait(setup.interval_s):
                break
    finally:
        stop.set()
        if deliveries is not None:
            deliveries.join()


def run_round(setup: SchedulerSetup) -> None:
    setup.heartbeat.touch()
    report = sweep(setup.sessions, setup.dispatcher, setup.policy)
    if report.dispatched or report.finalized:
        log.info("sweep: sent %s, finalized %s", report.dispatched, report.finalized)
    if report.pending:
        log.warning("sweep: broker unreachable, %d job(s) pending", len(report.pending))
    changed = prefetch.advance_all(setup.sessions, setup.dispatcher, setup.rules)
    if changed:
        log.info("prefetches advanced: %s", changed)
    retrievals = retrieve.advance_all(setup.sessions, setup.dispatcher, setup.rules)
    if retrievals:
        log.info("retrievals advanced: %s", retrievals)
    forwards = relay.advance_all(
        setup.sessions, setup.dispatcher, setup.rules.check_target, setup.policy.max_attempts
    )
    if forwards:
        log.info("moves relayed through the farm, forwarded on: %s", forwards)
    _audit_round(setup, report.dispatched, report.finalized, changed)


def _audit_round(
    setup: SchedulerSetup, dispatched: list[int], finalized: list[int], advanced: list[int]
) -> None:
    """What the round changed, in the audit trail; rows past the retention removed."""
    actor = audit.scheduler()
    try:
        with setup.sessions() as session, session.begin():
            for job_ids, action, code in (
                (dispatched, "job.dispatch", audit.EXECUTE),
                (finalized, "job.finalize", audit.UPDATE),
            ):
                for job_id in job_ids:
                    objects = audit.job_objects(session, job_id)
                    audit.record(session, actor, audit.Event(action, code, **objects))
            for prefetch_id in advanced:
                objects = audit.prefetch_objects(session, prefetch_id)
                audit.record(session, actor, audit.Event("prefetch.advance", "U", **objects))
        removed = audit.purge(setup.sessions, setup.audit_retention_days)
    except SQLAlchemyError as exc:
        log.error("audit rows of the round not written: %s", type(exc).__name__)
        return
    if removed:
        log.info("audit trail: %d row(s) past the retention removed", removed)


def _start_webhook_delivery(
    setup: SchedulerSetup, stop: threading.Event, once: bool
) -> threading.Thread | None:
    """Deliver webhooks on their own thread: a slow receiver never delays a sweep."""
    policy = setup.deliveries
    if policy is None:
        return None

    def loop() -> None:
        if once:
            report = deliver_due(setup.sessions, policy)
            log.info("webhooks: delivered %s, gave up %s", report.delivered, report.gave_up)
        else:
            run_deliveries(setup.sessions, policy, stop)

    thread = threading.Thread(target=loop, name="webhooks", daemon=True)
    thread.start()
    return thread
