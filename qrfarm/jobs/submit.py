"""Submitting a job: validate, write, commit, and only then enqueue."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.dicom import Level, Root, build_query_identifier, build_retrieve_identifier
from qrfarm.dicom.identifiers import KeyValue
from qrfarm.dicom.node import validate_ae_title
from qrfarm.errors import PermanentError
from qrfarm.models import Job, JobKind, JobState, NodeRecord, utcnow

from .dispatch import RUN_JOB, Dispatcher, node_queue


class UnknownNode(PermanentError, LookupError):
    """No node of that name is registered."""


@dataclass(frozen=True)
class JobRequest:
    kind: JobKind
    node: str
    level: Level
    root: Root = Root.STUDY
    keys: Mapping[str, KeyValue] = field(default_factory=dict)
    return_keys: Iterable[str] = ()
    destination: str | None = None
    priority: int = 0
    external_reference: str | None = None
    max_attempts: int | None = None


def identifier_for(request: JobRequest) -> dict[str, object]:
    """The request's identifier as DICOM JSON; raises InvalidIdentifier naming the rule."""
    if request.kind is JobKind.FIND:
        ds = build_query_identifier(request.root, request.level, request.keys, request.return_keys)
    else:
        if list(request.return_keys):
            from qrfarm.errors import InvalidIdentifier

            raise InvalidIdentifier(
                next(iter(request.return_keys)), "a retrieve takes unique keys with values only"
            )
        ds = build_retrieve_identifier(request.root, request.level, request.keys)
    return ds.to_json_dict()


def submit(
    sessions: sessionmaker[Session],
    request: JobRequest,
    dispatcher: Dispatcher,
    *,
    default_destination: str,
    check_target: Callable[[str], None] | None = None,
    default_max_attempts: int = 5,
) -> int:
    """Validate and record a job, then enqueue it; returns the job's id.

    With an ``external_reference`` already used, the job made then is returned
    and nothing new is queued.
    """
    identifier = identifier_for(request)
    destination = None
    if request.kind is JobKind.MOVE:
        destination = validate_ae_title(
            request.destination or default_destination, "move destination"
        )
    with sessions() as session, session.begin():
        if request.external_reference:
            existing = session.scalar(
                select(Job.id).where(Job.external_reference == request.external_reference)
            )
            if existing is not None:
                return existing
        node = session.scalar(select(NodeRecord).where(NodeRecord.name == request.node))
        if node is None:
            raise UnknownNode(f"node {request.node!r} is not registered (qrfarm node add)")
        if check_target is not None:
            check_target(node.host)
        job = Job(
            kind=request.kind,
            root=request.root.value,
            level=request.level.value,
            identifier=identifier,
            node_id=node.id,
            destination=destination,
            priority=request.priority,
            state=JobState.QUEUED,
            external_reference=request.external_reference,
            max_attempts=request.max_attempts or default_max_attempts,
            dispatched_at=utcnow(),
        )
        session.add(job)
        session.flush()
        job_id, queue = job.id, node_queue(node.name)
    # Only after the commit: a worker that takes the message finds the row.
    dispatcher.send(RUN_JOB, [job_id], queue)
    return job_id
