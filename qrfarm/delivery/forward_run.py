"""One attempt of a forward job: send what is not yet confirmed, verify, reconcile.

The job runner (qrfarm.jobs.runner) claims the job and hands it here with its
destination's Node; the worker wires :func:`forward_runner` in with what only
it has (the storage root, its associations). An attempt sends every instance
of the source job that the destination has not yet confirmed, records what
became of each, asks the destination what it holds, and ends the job:
``completed`` when every expected instance is confirmed, else a retry (while
some failure may pass) or ``partial`` / ``failed`` naming what is missing and
why. Instances are sent as held; converted only where the forward allows and
the destination refuses the held syntax; pseudonymised for a destination
marked so.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from qrfarm.dicom import Node
from qrfarm.errors import NodeBusy, NotForwardable, QrfarmError
from qrfarm.jobs.attempt_end import end_attempt
from qrfarm.jobs.leases import Claim, fenced
from qrfarm.jobs.states import transition
from qrfarm.jobs.watch import JobWatch
from qrfarm.jobs.worker_deps import KindRunner, RunnerDeps
from qrfarm.models import (
    DeliveredInstance,
    ExpectedInstance,
    Forward,
    ForwardedInstance,
    ForwardOptions,
    Job,
    JobState,
    NodeRecord,
    ReceivedInstance,
    utcnow,
)

from . import pseudonymise
from .asking import Expected, find_at_destination
from .forward_verify import Verifier, confirm, confirmed_held, pending
from .transports import Outgoing, Sent, TransportFactory, TransportOptions, transport_name
from .verification import confirm_for

log = logging.getLogger(__name__)


def verify_by_find(
    deps: RunnerDeps, node_id: int, node: Node, sent: list[tuple[str, str, str]]
) -> set[str]:
    """Which of ``sent`` (study, series, SOP Instance UIDs) the destination holds;
    a series whose find it refuses is left unconfirmed."""
    expected = [Expected(sop, None, study, series) for study, series, sop in sent]
    with deps.connections.query_retrieve(node) as conn:
        return find_at_destination(conn, expected, refused_raises=False)


@dataclass(frozen=True)
class ForwardDeps:
    storage_root: Path
    # Transport name -> factory ("dimse" always; others as the worker has them).
    transports: Mapping[str, TransportFactory]
    associations: int = 4
    verify: Verifier = verify_by_find


@dataclass
class _Plan:
    items: list[Outgoing]
    # held SOP UID -> (study, series) as held
    held: dict[str, tuple[str, str]]
    transcode: bool
    seed: str | None
    node_id: int
    transport: str
    replaced: list[pseudonymise.Replaced] = field(default_factory=list)


def forward_runner(forward_deps: ForwardDeps) -> KindRunner:
    """The runner of forward jobs, for RunnerDeps.kind_runners."""

    def run(deps: RunnerDeps, taken: Claim, node: Node, watch: JobWatch) -> None:
        run_forward(forward_deps, deps, taken, node, watch)

    return run


def run_forward(
    fdeps: ForwardDeps, deps: RunnerDeps, taken: Claim, node: Node, watch: JobWatch
) -> None:
    plan = _plan(deps, taken, fdeps.storage_root)
    if plan is None:
        return
    rewrite = None
    lock = threading.Lock()
    if plan.seed is not None:
        pseudonymiser = pseudonymise.Pseudonymiser(plan.seed)

        def rewrite_one(dataset: object) -> None:
            replaced = pseudonymiser(dataset)  # type: ignore[arg-type]
            with lock:
                plan.replaced.extend(replaced)

        rewrite = rewrite_one
    factory = fdeps.transports.get(plan.transport)
    if factory is None:
        raise QrfarmError(f"no {plan.transport} transport in this worker for {node}")
    options = TransportOptions(node, plan.node_id, plan.transcode, rewrite, fdeps.associations)
    # Stops between instances once the lease is lost or the job is cancelled.
    sent = factory(options).send(plan.items, watch.halted)
    _record(deps, taken, plan, sent)
    with deps.sessions() as session:
        to_verify = pending(session, taken.job_id)
    problem = None
    if to_verify and not watch.cancelled.is_set():
        try:
            method, confirmed = confirm(
                deps,
                fdeps.verify,
                job_id=taken.job_id,
                node_id=plan.node_id,
                node=node,
                transport=plan.transport,
                items=to_verify,
            )
        except NodeBusy:
            raise  # its permits are taken: the job waits its turn, no attempt counted
        except QrfarmError as exc:
            # What was sent is recorded: the attempt ends on what is confirmed
            # (those stay named unconfirmed), never as a lost task.
            log.warning(
                "job %d: what was sent to %s could not be checked: %s", taken.job_id, node, exc
            )
            problem = f"the check of what was sent failed: {exc}"
        else:
            confirm_for(deps, taken, confirmed, method)
    _end(deps, taken, sent, str(node), problem)


def _plan(deps: RunnerDeps, taken: Claim, root: Path) -> _Plan | None:
    with deps.sessions() as session, session.begin():
        job = fenced(session, taken)
        if job is None:
            return None
        forward = session.get_one(Forward, job.id)
        options = session.get(ForwardOptions, job.node_id)
        node = session.get_one(NodeRecord, job.node_id)
        done = select(DeliveredInstance.sop_instance_uid).where(DeliveredInstance.job_id == job.id)
        rows = session.execute(
            select(
                ReceivedInstance.sop_instance_uid,
                ReceivedInstance.sop_class_uid,
                ReceivedInstance.transfer_syntax,
                ReceivedInstance.file_path,
                ReceivedInstance.study_instance_uid,
                ReceivedInstance.series_instance_uid,
            )
            .where(
                ReceivedInstance.job_id == forward.source_job_id,
                ReceivedInstance.sop_instance_uid.not_in(done),
            )
            .order_by(ReceivedInstance.id)
        ).all()
        # Read as the instances go out, the stricter of the forward's and the
        # destination's: one marked for research while this forward waited
        # never gets the originals.
        pseudonymise = forward.pseudonymise or bool(options and options.pseudonymise)
        seed = options.pseudonym_seed if pseudonymise and options else None
        if pseudonymise and not seed:
            # Never the originals in place of pseudonyms.
            raise NotForwardable(
                f"job {job.id} is to be pseudonymised and its destination has no "
                "pseudonym seed: nothing sent (qrfarm node forwarding NODE --pseudonymise)"
            )
        return _Plan(
            items=[
                Outgoing(sop, sop_class, syntax, _inside(root, path))
                for sop, sop_class, syntax, path, _, _ in rows
            ],
            held={sop: (study, series) for sop, _, _, _, study, series in rows},
            transcode=forward.transcode,
            seed=seed,
            node_id=job.node_id,
            transport=transport_name(node),
        )


def _inside(root: Path, relative: str) -> Path:
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise QrfarmError("a recorded instance's path lies outside the storage root")
    return path


def _record(deps: RunnerDeps, taken: Claim, plan: _Plan, sent: list[Sent]) -> None:
    now = utcnow()
    with deps.sessions() as session, session.begin():
        if fenced(session, taken) is None:
            return
        known = {
            row.sop_instance_uid: row
            for row in session.scalars(
                select(ForwardedInstance).where(ForwardedInstance.job_id == taken.job_id)
            )
        }
        for item in sent:
            study, series = plan.held.get(item.sop_instance_uid, ("", ""))
            row = known.get(item.sop_instance_uid)
            if row is None:
                row = ForwardedInstance(job_id=taken.job_id, sop_instance_uid=item.sop_instance_uid)
                session.add(row)
            row.status = item.status
            if item.ok:
                row.sent_sop_instance_uid = item.sent_sop_instance_uid
                # Under other UIDs when pseudonymised: where to look for it there.
                row.sent_study_instance_uid = item.study_instance_uid or study
                row.sent_series_instance_uid = item.series_instance_uid or series
                row.sent_transfer_syntax = item.transfer_syntax
                row.sent_at = now
            elif row.sent_at is None:
                row.sent_sop_instance_uid = item.sent_sop_instance_uid
        if plan.seed is not None:
            pseudonymise.record(session, plan.node_id, plan.replaced)


def _end(
    deps: RunnerDeps, taken: Claim, sent: list[Sent], node: str, problem: str | None = None
) -> None:
    """End the attempt and the job on what the destination has confirmed."""
    with deps.sessions() as session, session.begin():
        job = fenced(session, taken)
        if job is None:
            return
        held_confirmed = confirmed_held(session, job.id)
        expected = set(
            session.scalars(
                select(ExpectedInstance.sop_instance_uid).where(ExpectedInstance.job_id == job.id)
            )
        )
        failed = [s for s in sent if not s.ok]
        end_attempt(session, taken, "forwarded" if not failed else "forwarded with failures")
        _conclude(session, job, deps, expected, held_confirmed, failed, node, problem)


def _conclude(
    session: Session,
    job: Job,
    deps: RunnerDeps,
    expected: set[str],
    confirmed: set[str],
    failed: list[Sent],
    node: str,
    problem: str | None = None,
) -> None:
    job.recorded_count = job.confirmed_count = len(confirmed & expected)
    missing = expected - confirmed
    job.missing_uids = sorted(missing)
    job.failed_uids = sorted({s.sop_instance_uid for s in failed})
    transition(job, JobState.RECONCILING)
    if job.cancel_requested:
        transition(job, JobState.CANCELLED, error=f"cancelled; {len(confirmed)} confirmed")
        return
    if not missing:
        transition(job, JobState.COMPLETED)
        job.error = None
        return
    parts = [f"{len(missing)} of {len(expected)} instance(s) not confirmed at {node}"]
    if failed:
        parts.append(f"{len(failed)} not taken: {failed[0].reason}")
    if problem:
        parts.append(problem)
    reason = "; ".join(parts)
    # Worth another attempt: a failure that may pass, or sent and not (yet) seen.
    passing = any(s.retriable for s in failed) or len(missing) > len(failed)
    policy = deps.policy
    if passing and policy.retry_partial and job.attempt_count < job.max_attempts:
        transition(job, JobState.QUEUED, error=f"{reason}; sending those again")
        job.next_attempt_at = utcnow() + dt.timedelta(seconds=policy.backoff(job.attempt_count))
        return
    transition(job, JobState.PARTIAL if confirmed else JobState.FAILED, error=reason)
