"""Submitting a job: validate, write, commit, and only then enqueue."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.config import Settings
from qrfarm.dicom import Level, Root, build_query_identifier, build_retrieve_identifier
from qrfarm.dicom.identifiers import KeyValue
from qrfarm.dicom.node import validate_ae_title
from qrfarm.errors import FieldError, InvalidIdentifier, UnknownNode
from qrfarm.models import Job, JobKind, JobState, NodeRecord, utcnow
from qrfarm.nodes.roles import is_source, resolve_destination
from qrfarm.notify.targets import validate_callback_url
from qrfarm.observability.tracing import current_traceparent, tracer

from . import holds, relay
from .dispatch import Dispatcher, send_run_jobs
from .nodes import check_node_targets


@dataclass(frozen=True)
class JobRequest:
    kind: JobKind
    node: str
    level: Level
    root: Root = Root.STUDY
    keys: Mapping[str, KeyValue] = field(default_factory=dict)
    return_keys: Iterable[str] = ()
    # Where a move sends: a registered destination node (its name or AE
    # title), or the farm's own storage SCP (its AE title; the default).
    destination: str | None = None
    priority: int = 0
    external_reference: str | None = None
    max_attempts: int | None = None
    # POSTed the job's summary when it ends.
    callback_url: str | None = None
    # A retrieve that may run as C-GET or C-MOVE, by the node's profile.
    either_retrieve: bool = False
    # Not started before this time (naive UTC); held until then.
    not_before: dt.datetime | None = None
    # The batch whose row this job is.
    batch_id: int | None = None


@dataclass(frozen=True)
class SubmitRules:
    """What a submission is checked against and filled in with."""

    default_destination: str
    check_target: Callable[[str], None] | None = None
    default_max_attempts: int = 5
    webhooks_enabled: bool = False
    # The outbound allow-list callback hosts pass (stricter for addresses
    # inside: qrfarm.notify.targets); "*" still refuses those.
    webhook_hosts: tuple[str, ...] = ("*",)
    # What holds (windows, not_before) are judged by at submit.
    clock: Callable[[], dt.datetime] = utcnow

    @classmethod
    def from_settings(cls, settings: Settings) -> SubmitRules:
        return cls(
            default_destination=settings.scp_ae_title,
            check_target=settings.check_target,
            default_max_attempts=settings.max_attempts,
            webhooks_enabled=settings.webhook_secret is not None,
            webhook_hosts=tuple(settings.allowed_hosts),
        )


def identifier_for(request: JobRequest) -> dict[str, object]:
    """The request's identifier as DICOM JSON; raises InvalidIdentifier naming the rule."""
    if request.kind is JobKind.FORWARD:
        raise FieldError(
            ["body", "kind"],
            "a forward sends what another job holds: POST /jobs/{id}/forward "
            "(qrfarm forward JOB --dest NODE)",
        )
    if request.kind is JobKind.FIND:
        ds = build_query_identifier(request.root, request.level, request.keys, request.return_keys)
    else:
        if list(request.return_keys):
            raise InvalidIdentifier(
                next(iter(request.return_keys)), "a retrieve takes unique keys with values only"
            )
        ds = build_retrieve_identifier(request.root, request.level, request.keys)
    return ds.to_json_dict()


def existing_job(session: Session, external_reference: str | None) -> int | None:
    """The job already made for this external reference, if any."""
    if not external_reference:
        return None
    return session.scalar(select(Job.id).where(Job.external_reference == external_reference))


def same_request(session: Session, job_id: int, request: JobRequest) -> bool:
    """Whether the job made before under a reference was made for this very request."""
    job = session.get(Job, job_id)
    if job is None:
        return False
    node = session.get(NodeRecord, job.node_id)
    try:
        identifier = identifier_for(request)
    except InvalidIdentifier:
        return False
    return (
        job.kind is request.kind
        and node is not None
        and node.name == request.node
        and job.level == request.level.value
        and job.root == request.root.value
        and job.identifier == identifier
        and job.callback_url == request.callback_url
        and (request.destination is None or request.destination in _destination_names(session, job))
    )


def _destination_names(session: Session, job: Job) -> set[str | None]:
    """What a request may call the job's destination: its AE title or its node's name."""
    names: set[str | None] = {job.destination}
    if job.destination_node_id is not None:
        node = session.get(NodeRecord, job.destination_node_id)
        names.add(node.name if node is not None else None)
    return names


def check_destination(session: Session, destination: str, farm_scp: str) -> NodeRecord | None:
    """A move goes to the farm's own storage SCP or to a registered destination
    node (nodes are an admin's to add): a submitter cannot send studies to any
    AE title a PACS happens to know. The destination's node (None: the farm)."""
    return resolve_destination(session, destination, farm_scp)[1]


def new_job(
    session: Session,
    request: JobRequest,
    rules: SubmitRules,
    *,
    prefetch_id: int | None = None,
    dispatched: bool = False,
    flush: bool = True,
) -> Job:
    """Validate ``request`` and add its job, queued but not yet sent, to ``session``.

    The caller commits, then sends: a worker that takes the message finds
    the row. A job whose message is never sent (a crash in between) is sent
    by the sweeper, which picks up queued jobs never dispatched.
    """
    identifier = identifier_for(request)
    destination = None
    destination_node = None
    # A get that may run as a move needs a destination too.
    if request.kind is JobKind.MOVE or (request.either_retrieve and request.kind is JobKind.GET):
        destination, destination_node = resolve_destination(
            session, request.destination, rules.default_destination
        )
        destination = validate_ae_title(destination, "move destination")
        if destination_node is not None and request.kind is not JobKind.MOVE:
            # Only a C-MOVE can send to a third party: a C-GET fills the farm.
            raise FieldError(
                ["body", "destination"],
                "a retrieve that may run as a C-GET goes to the farm; "
                "send a move to reach another node",
            )
    relay_to = None
    if destination_node is not None and relay.relayed(session, destination_node):
        # The source cannot reach it: the move comes to the farm, which
        # forwards what arrived once it ends (qrfarm.delivery.relay).
        relay_to, destination_node = destination_node, None
        destination = validate_ae_title(rules.default_destination, "move destination")
    if request.callback_url is not None:
        validate_callback_url(
            request.callback_url,
            allowed_hosts=rules.webhook_hosts,
            secret_configured=rules.webhooks_enabled,
        )
    node = session.scalar(select(NodeRecord).where(NodeRecord.name == request.node))
    if node is None:
        raise UnknownNode(f"node {request.node!r} is not registered (qrfarm node add)")
    if request.kind in (JobKind.FIND, JobKind.GET, JobKind.MOVE) and not is_source(node):
        raise FieldError(
            ["body", "node"],
            f"node {node.name} is registered as a destination only: nothing is queried "
            "or retrieved from it (qrfarm node add --role source|both)",
        )
    if rules.check_target is not None:
        # Its DIMSE host and its DICOMweb URL's host alike.
        check_node_targets(rules.check_target, node)
    job = Job(
        kind=request.kind,
        root=request.root.value,
        level=request.level.value,
        identifier=identifier,
        node_id=node.id,
        destination=destination,
        destination_node_id=destination_node.id if destination_node is not None else None,
        priority=request.priority,
        state=JobState.QUEUED,
        external_reference=request.external_reference,
        max_attempts=request.max_attempts or rules.default_max_attempts,
        callback_url=request.callback_url,
        either_retrieve=request.either_retrieve and request.kind is not JobKind.FIND,
        prefetch_id=prefetch_id,
        batch_id=request.batch_id,
        not_before=request.not_before,
        trace_parent=current_traceparent(),
        # Sent as soon as it is committed (else the sweeper sends it).
        dispatched_at=utcnow() if dispatched else None,
    )
    # Held (a bulk window closed, a not_before ahead): recorded now, sent by
    # the scheduler when it may start.
    now = rules.clock()
    hold = holds.hold_for(session, job, node, now, starting=False)
    if hold is not None:
        holds.apply(job, hold, now)
    session.add(job)
    if relay_to is not None:
        relay.relay(session, job, relay_to)
    if flush:  # else the caller flushes many at once (qrfarm.jobs.submit_many)
        session.flush()
    return job


def send_jobs(sessions: sessionmaker[Session], dispatcher: Dispatcher, job_ids: list[int]) -> None:
    """Enqueue committed jobs, and stamp when they were sent (a broker that cannot be
    reached leaves them pending, for the sweeper)."""
    if not job_ids:
        return
    with sessions() as session, session.begin():
        rows = session.execute(
            select(Job, NodeRecord.name)
            .join(NodeRecord, NodeRecord.id == Job.node_id)
            .where(Job.id.in_(job_ids))
        ).all()
        # Held jobs (a window, a not_before) wait for the scheduler.
        ready = [(job, name) for job, name in rows if job.next_attempt_at is None]
        for job, _ in ready:
            job.dispatched_at = utcnow()
        sends = [(job.id, node_name, job.priority) for job, node_name in ready]
    send_run_jobs(sessions, dispatcher, sends)


def submit(
    sessions: sessionmaker[Session],
    request: JobRequest,
    dispatcher: Dispatcher,
    rules: SubmitRules,
) -> int:
    """Validate and record a job, then enqueue it; returns the job's id.

    With an ``external_reference`` already used, the job made then is returned
    and nothing new is queued. A broker that cannot be reached does not undo
    the job: it is left pending (see ``send_run_jobs``) and the sweeper sends it.
    """
    held = False
    try:
        with (
            tracer.start_as_current_span(
                "qrfarm.job.submit",
                attributes={"qrfarm.job.kind": request.kind.value, "qrfarm.node": request.node},
            ) as span,
            sessions() as session,
            session.begin(),
        ):
            existing = existing_job(session, request.external_reference)
            if existing is not None:
                return existing
            job = new_job(session, request, rules, dispatched=True)
            job_id = job.id
            held = job.next_attempt_at is not None
            span.set_attribute("qrfarm.job.id", job_id)
    except IntegrityError:
        # The same reference submitted at the same moment: the other one won.
        with sessions() as session:
            existing = existing_job(session, request.external_reference)
        if existing is None:
            raise
        return existing
    # Only after the commit: a worker that takes the message finds the row.
    if not held:
        send_run_jobs(sessions, dispatcher, [(job_id, request.node, request.priority)])
    return job_id
