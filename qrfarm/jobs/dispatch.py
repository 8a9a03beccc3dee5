"""Handing work to the queue: a task sent by its name, never by importing task code."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.errors import BrokerUnavailable
from qrfarm.models import Job

from .priority import BROKER_STEPS, broker_priority

log = logging.getLogger(__name__)

RUN_JOB = "qrfarm.run_job"

DISPATCH_PENDING_NOTE = (
    "dispatch pending: the job is recorded, but the queue's broker cannot be reached; "
    "the scheduler sends it once the broker is back"
)


# kombu's separator between a queue's name and its priority step in the
# Redis key of each lane (its default, pinned: broker_keys names the keys).
PRIORITY_SEP = "\x06\x16"


def node_queue(node_name: str) -> str:
    """The queue of a node: workers serve the nodes whose queues they consume."""
    return f"qrfarm.node.{node_name}"


def broker_keys(queue: str) -> list[str]:
    """The Redis lists that hold a queue's messages, one per priority lane, in
    the order a worker pops them."""
    return [queue if step == 0 else f"{queue}{PRIORITY_SEP}{step}" for step in BROKER_STEPS]


def priority_transport_options() -> dict[str, Any]:
    """kombu's Redis transport options for the lanes (producers and workers alike)."""
    return {"priority_steps": list(BROKER_STEPS), "sep": PRIORITY_SEP}


class Dispatcher(Protocol):
    def send(self, task: str, args: list[Any], queue: str, priority: int = 0) -> None:
        """Send in the lane of the job's ``priority``, or raise BrokerUnavailable."""


class CeleryDispatcher:
    """Sends tasks by name through a Celery app configured for the broker only."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def send(self, task: str, args: list[Any], queue: str, priority: int = 0) -> None:
        from kombu.exceptions import OperationalError

        try:
            self.app.send_task(task, args=args, queue=queue, priority=broker_priority(priority))
        except OperationalError as exc:
            # Kombu has retried by then; the reason names host and port, never a password.
            raise BrokerUnavailable(f"the broker cannot be reached: {exc}") from exc


def celery_dispatcher(broker: str, transport_options: dict[str, Any]) -> CeleryDispatcher:
    """A dispatcher for producers: a Celery app that only sends, by task name."""
    from celery import Celery

    app = Celery("qrfarm-producer", broker=broker, set_as_current=False)
    app.conf.update(
        broker_transport_options=transport_options,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
    )
    return CeleryDispatcher(app)


def send_run_jobs(
    sessions: sessionmaker[Session],
    dispatcher: Dispatcher,
    jobs: Sequence[tuple[int, str] | tuple[int, str, int]],
) -> list[int]:
    """Send each committed (job id, node name[, priority]); returns the ids left pending.

    While the broker cannot be reached, the jobs not sent are marked never
    dispatched (``dispatched_at`` cleared), so the sweeper sends them as soon
    as it can, and a reader is told their dispatch is pending. A message that
    did go out and is sent again later is harmless: the claim lets one run.
    """
    for index, (job_id, node_name, *rest) in enumerate(jobs):
        try:
            dispatcher.send(RUN_JOB, [job_id], node_queue(node_name), rest[0] if rest else 0)
        except BrokerUnavailable as exc:
            pending = [job[0] for job in jobs[index:]]
            log.warning("jobs %s recorded, not sent: %s", pending, exc)
            _mark_pending(sessions, pending)
            return pending
    return []


def _mark_pending(sessions: sessionmaker[Session], job_ids: list[int]) -> None:
    try:
        with sessions() as session, session.begin():
            session.execute(update(Job).where(Job.id.in_(job_ids)).values(dispatched_at=None))
    except SQLAlchemyError as exc:
        # Their stamp stays: the sweeper sends them once it counts as stale.
        log.warning("jobs %s could not be marked pending: %s", job_ids, type(exc).__name__)
