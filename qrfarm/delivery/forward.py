"""Forward jobs: what a finished job holds, sent on to a destination node.

A forward is a job of its own (kind ``forward``) on the destination's queue,
with its own attempts and reconciliation: expected is what the source job
holds when the forward is made, confirmed is what the destination is found
to hold afterwards. Made here; run by :mod:`qrfarm.delivery.forward_run`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.errors import Conflict, NotForwardable, UnknownNode
from qrfarm.jobs.dispatch import Dispatcher, send_run_jobs
from qrfarm.jobs.nodes import check_node_targets
from qrfarm.jobs.submit import existing_job
from qrfarm.models import (
    ExpectedInstance,
    Forward,
    ForwardOptions,
    Job,
    JobKind,
    JobState,
    NodeRecord,
    ReceivedInstance,
    table,
    utcnow,
)
from qrfarm.observability.tracing import current_traceparent

# A job whose instances can be forwarded: it ended having brought some in.
FORWARDABLE_STATES = frozenset({JobState.COMPLETED, JobState.PARTIAL})


@dataclass(frozen=True)
class ForwardRequest:
    source_job_id: int
    destination: str  # a registered node's name
    # None: the destination's own option (qrfarm node forwarding).
    transcode: bool | None = None
    priority: int = 0
    external_reference: str | None = None
    callback_url: str | None = None
    max_attempts: int = 5


def destination_node(session: Session, name: str) -> NodeRecord:
    node = session.scalar(select(NodeRecord).where(NodeRecord.name == name))
    if node is None:
        raise UnknownNode(f"node {name!r} is not registered (qrfarm node add)")
    # A node registered as a source only is never sent to.
    if getattr(node, "role", "both") == "source":
        raise NotForwardable(f"node {name!r} is a source only; it cannot be a destination")
    return node


def options_of(session: Session, node_id: int) -> ForwardOptions:
    """The node's forwarding options (defaults when never set; not added)."""
    row = session.get(ForwardOptions, node_id)
    return row or ForwardOptions(
        node_id=node_id, via_farm=False, transcode=False, pseudonymise=False
    )


def set_options(
    session: Session,
    node_name: str,
    *,
    via_farm: bool | None = None,
    transcode: bool | None = None,
    pseudonymise: bool | None = None,
) -> ForwardOptions:
    """Change a node's forwarding options; a node first marked for pseudonymised
    delivery gets its own seed (kept: its pseudonyms stay the same for ever)."""
    node = destination_node(session, node_name)
    row = session.get(ForwardOptions, node.id)
    if row is None:
        row = ForwardOptions(node_id=node.id, via_farm=False, transcode=False, pseudonymise=False)
        session.add(row)
    if via_farm is not None:
        row.via_farm = via_farm
    if transcode is not None:
        row.transcode = transcode
    if pseudonymise is not None:
        row.pseudonymise = pseudonymise
    if row.pseudonymise and not row.pseudonym_seed:
        row.pseudonym_seed = secrets.token_hex(32)
    session.flush()
    return row


def options_document(row: ForwardOptions) -> dict[str, bool]:
    """The options as shown (the seed never is)."""
    return {
        "via_farm": bool(row.via_farm),
        "transcode": bool(row.transcode),
        "pseudonymise": bool(row.pseudonymise),
    }


def new_forward(
    session: Session,
    request: ForwardRequest,
    check_target: Callable[[str], None] | None = None,
) -> Job:
    """Check ``request`` and add its forward job, queued but not yet sent;
    ``check_target``: the outbound allow-list the destination's host must pass."""
    source = session.get(Job, request.source_job_id)
    if source is None:
        raise NotForwardable(f"job {request.source_job_id} does not exist")
    if source.kind not in (JobKind.MOVE, JobKind.GET):
        raise NotForwardable(
            f"job {source.id} is a {source.kind.value}; only what a move or get brought "
            "into the farm can be forwarded"
        )
    if source.state not in FORWARDABLE_STATES:
        raise NotForwardable(
            f"job {source.id} is {source.state.value}; a job is forwarded once it is "
            "completed or partial"
        )
    node = destination_node(session, request.destination)
    if check_target is not None:
        # Its DIMSE host and its DICOMweb URL's host alike.
        check_node_targets(check_target, node)
    held = session.execute(
        select(
            ReceivedInstance.sop_instance_uid,
            ReceivedInstance.sop_class_uid,
            ReceivedInstance.study_instance_uid,
            ReceivedInstance.series_instance_uid,
        ).where(ReceivedInstance.job_id == source.id)
    ).all()
    if not held:
        raise NotForwardable(f"job {source.id} holds no instance to forward")
    options = options_of(session, node.id)
    job = Job(
        kind=JobKind.FORWARD,
        root="study",
        level="IMAGE",
        identifier={},
        node_id=node.id,
        destination=node.ae_title,
        priority=request.priority,
        state=JobState.QUEUED,
        external_reference=request.external_reference,
        max_attempts=request.max_attempts,
        callback_url=request.callback_url,
        expected_count=len(held),
        trace_parent=current_traceparent(),
        dispatched_at=utcnow(),
        # The destination, as a move to another node names its own.
        destination_node_id=node.id,
    )
    session.add(job)
    session.flush()
    session.add(
        Forward(
            job_id=job.id,
            source_job_id=source.id,
            pseudonymise=bool(options.pseudonymise),
            transcode=bool(options.transcode if request.transcode is None else request.transcode),
        )
    )
    session.execute(
        insert(table(ExpectedInstance)),
        [
            {
                "job_id": job.id,
                "sop_instance_uid": sop,
                "sop_class_uid": sop_class,
                "study_instance_uid": study,
                "series_instance_uid": series,
            }
            for sop, sop_class, study, series in held
        ],
    )
    return job


def submit_forward(
    sessions: sessionmaker[Session],
    request: ForwardRequest,
    dispatcher: Dispatcher,
    check_target: Callable[[str], None] | None = None,
) -> int:
    """Record a forward job, then enqueue it on the destination's queue; its id.
    A reference used before gives back its job only for this same forward
    (Conflict otherwise: a reference is no key to other jobs)."""
    try:
        with sessions() as session, session.begin():
            existing = earlier_forward(session, request)
            if existing is not None:
                return existing
            job = new_forward(session, request, check_target)
            job_id, node_name = job.id, request.destination
    except IntegrityError:
        # The same reference submitted at the same moment: the other one won.
        with sessions() as session:
            existing = earlier_forward(session, request)
        if existing is None:
            raise
        return existing
    send_run_jobs(sessions, dispatcher, [(job_id, node_name)])
    return job_id


def earlier_forward(session: Session, request: ForwardRequest) -> int | None:
    """The forward made before under the request's reference, if it was made
    for this very forward; None when the reference is new; Conflict when it
    named another job or another forward."""
    job_id = existing_job(session, request.external_reference)
    if job_id is None:
        return None
    job = session.get(Job, job_id)
    forward = session.get(Forward, job_id)
    node = session.scalar(select(NodeRecord).where(NodeRecord.name == request.destination))
    same = (
        job is not None
        and forward is not None
        and node is not None
        and forward.source_job_id == request.source_job_id
        and job.destination_node_id == node.id
        and job.callback_url == request.callback_url
    )
    if not same:
        raise Conflict(f"reference {request.external_reference!r} was used for another request")
    return job_id


def forwards_of(session: Session, source_job_id: int) -> list[int]:
    """The forward jobs made of a job, oldest first."""
    return list(
        session.scalars(
            select(Forward.job_id)
            .where(Forward.source_job_id == source_job_id)
            .order_by(Forward.job_id)
        )
    )
