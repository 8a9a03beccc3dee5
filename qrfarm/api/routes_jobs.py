"""/jobs: submit, list, read, results, instances, cancel."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Response, status
from sqlalchemy import func, select

from qrfarm.errors import Conflict, FieldError, NoSuchJob, UnknownNode
from qrfarm.jobs import control
from qrfarm.jobs.queries import job_summary
from qrfarm.jobs.submit import JobRequest, existing_job, same_request, submit
from qrfarm.models import FindResult, Job, JobKind, JobState, NodeRecord, ReceivedInstance
from qrfarm.workflow.prefetch import HL7_REFERENCE_PREFIX

from .deps import Context, Db
from .dicom_json import keys_from_dicom_json
from .schemas import UNREADABLE_BODY, CancelOut, ErrorOut, InstanceOut, JobIn, JobOut, Page
from .scopes import needs
from .tokens import Scope

router = APIRouter(prefix="/jobs", tags=["jobs"])
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=2**31 - 1)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="The same key again returns the job made the first time.",
    ),
]
JobId = Annotated[int, Path(ge=1, le=2**31 - 1)]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut}}


def reference_of(body_reference: str | None, idempotency_key: str | None) -> str | None:
    if idempotency_key and body_reference and idempotency_key != body_reference:
        raise FieldError(
            ["header", "Idempotency-Key"], "differs from the body's external_reference"
        )
    reference = body_reference or idempotency_key
    if reference and reference.startswith(HL7_REFERENCE_PREFIX):
        # The HL7 listener's references (sender and control ID): an API caller
        # must not take an order's place, or read it back by its reference.
        raise FieldError(
            ["header", "Idempotency-Key"],
            f"references beginning {HL7_REFERENCE_PREFIX!r} are the HL7 listener's",
        )
    return reference


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobOut,
    responses={
        **UNREADABLE_BODY,
        200: {"model": JobOut, "description": "The job made before with this key."},
        409: {"model": ErrorOut, "description": "The key was used for another request."},
    },
    **needs(Scope.SUBMIT, ("job.submit", "C")),
)
def create_job(
    body: JobIn, ctx: Context, response: Response, idempotency_key: IdempotencyKey = None
) -> dict[str, Any]:
    """Submit a find, get or move; it is queued once it is recorded."""
    reference = reference_of(body.external_reference, idempotency_key)
    if body.keys is not None and body.identifier is not None:
        raise FieldError(["body", "identifier"], "give either identifier or keys, not both")
    keys = (
        keys_from_dicom_json(body.identifier, body.level)
        if body.identifier is not None
        else dict(body.keys or {})
    )
    return_keys = [*body.return_keys, *(k for k, v in keys.items() if v is None)]
    request = JobRequest(
        kind=body.kind,
        node=body.node,
        level=body.level,
        root=body.root,
        keys={k: v for k, v in keys.items() if v is not None},
        return_keys=return_keys,
        destination=body.destination,
        priority=body.priority,
        external_reference=reference,
        max_attempts=body.max_attempts,
        callback_url=body.callback_url,
        either_retrieve=body.either_retrieve,
        not_before=None if body.not_before is None else _naive_utc(body.not_before, "not_before"),
    )
    # Sessions of their own, each closed before the next opens: on SQLite a
    # transaction holds the database's one write lock.
    with ctx.sessions() as db:
        earlier = existing_job(db, reference)
        if earlier is not None:
            # Only the same request gets its job back: a reference is not a
            # key to other callers' jobs.
            if not same_request(db, earlier, request):
                raise Conflict(f"reference {reference!r} was used for another request")
            response.status_code = status.HTTP_200_OK
            return job_summary(db, earlier)
    try:
        job_id = submit(ctx.sessions, request, ctx.dispatcher, ctx.rules)
    except UnknownNode as exc:
        raise FieldError(["body", "node"], str(exc)) from exc
    response.headers["Location"] = f"/jobs/{job_id}"
    with ctx.sessions() as db:
        return job_summary(db, job_id)


@router.get("", response_model=Page[JobOut], **needs(Scope.READ, ("job.list", "R")))
def list_jobs(
    db: Db,
    state: JobState | None = None,
    kind: JobKind | None = None,
    node: Annotated[str | None, Query(max_length=64)] = None,
    reference: Annotated[str | None, Query(max_length=255)] = None,
    created_after: dt.datetime | None = None,
    created_before: dt.datetime | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    """Jobs, newest first, by state, kind, node, external reference and creation time (UTC)."""
    query = select(Job.id)
    if state is not None:
        query = query.where(Job.state == state)
    if kind is not None:
        query = query.where(Job.kind == kind)
    if node is not None:
        query = query.join(NodeRecord, NodeRecord.id == Job.node_id).where(NodeRecord.name == node)
    if reference is not None:
        query = query.where(Job.external_reference == reference)
    if created_after is not None:
        query = query.where(Job.created_at >= _naive_utc(created_after, "created_after"))
    if created_before is not None:
        query = query.where(Job.created_at < _naive_utc(created_before, "created_before"))
    total = db.scalar(select(func.count()).select_from(query.subquery())) or 0
    ids = db.scalars(query.order_by(Job.id.desc()).limit(limit).offset(offset)).all()
    items = [job_summary(db, job_id, responses=False) for job_id in ids]
    return {"items": items, "total": total, "limit": limit, "offset": offset}


def _naive_utc(value: dt.datetime, name: str) -> dt.datetime:
    if value.tzinfo is not None:
        try:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        except OverflowError as exc:
            raise FieldError(["query", name], "outside the years 1 to 9999 in UTC") from exc
    return value


@router.get(
    "/{job_id}",
    response_model=JobOut,
    responses=NOT_FOUND,
    **needs(Scope.READ, ("job.read", "R")),
)
def read_job(job_id: JobId, db: Db) -> dict[str, Any]:
    """State, counts, progress, every attempt with every response, failed and missing UIDs."""
    return job_summary(db, job_id)


@router.get(
    "/{job_id}/results",
    response_model=Page[dict[str, Any]],
    responses={**NOT_FOUND, 409: {"model": ErrorOut}},
    **needs(Scope.READ, ("job.results.read", "R")),
)
def job_results(job_id: JobId, db: Db, limit: Limit = 100, offset: Offset = 0) -> dict[str, Any]:
    """A find job's answers as DICOM JSON, in the order they came."""
    job = _job(db, job_id)
    if job.kind is not JobKind.FIND:
        raise Conflict(f"job {job_id} is a {job.kind.value}; only find jobs have answers")
    total = db.scalar(select(func.count()).where(FindResult.job_id == job_id)) or 0
    rows = db.scalars(
        select(FindResult.dataset)
        .where(FindResult.job_id == job_id)
        .order_by(FindResult.sequence)
        .limit(limit)
        .offset(offset)
    ).all()
    return {"items": list(rows), "total": total, "limit": limit, "offset": offset}


@router.get(
    "/{job_id}/instances",
    response_model=Page[InstanceOut],
    responses=NOT_FOUND,
    **needs(Scope.READ, ("job.instances.read", "R")),
)
def job_instances(job_id: JobId, db: Db, limit: Limit = 100, offset: Offset = 0) -> dict[str, Any]:
    """The instances recorded for the job, in the order they arrived."""
    _job(db, job_id)
    total = db.scalar(select(func.count()).where(ReceivedInstance.job_id == job_id)) or 0
    rows = db.scalars(
        select(ReceivedInstance)
        .where(ReceivedInstance.job_id == job_id)
        .order_by(ReceivedInstance.id)
        .limit(limit)
        .offset(offset)
    ).all()
    items = [
        {
            "sop_instance_uid": r.sop_instance_uid,
            "sop_class_uid": r.sop_class_uid,
            "study_instance_uid": r.study_instance_uid,
            "series_instance_uid": r.series_instance_uid,
            "transfer_syntax": r.transfer_syntax,
            "size": r.size,
            "file_path": r.file_path,
            "calling_ae": r.calling_ae,
            "matched_by": r.matched_by.value,
            "received_at": r.received_at.isoformat(),
        }
        for r in rows
    ]
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=CancelOut,
    responses=NOT_FOUND,
    **needs(Scope.SUBMIT, ("job.cancel", "U")),
)
def cancel_job(job_id: JobId, ctx: Context) -> dict[str, Any]:
    """Cancel: a queued job ends at once; a running one gets C-CANCEL and ends with what came."""
    state = control.cancel(ctx.sessions, job_id)
    return {"id": job_id, "state": state.value}


@router.post(
    "/{job_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses={**NOT_FOUND, 409: {"model": ErrorOut}},
    **needs(Scope.SUBMIT, ("job.retry", "U")),
)
def retry_job(job_id: JobId, ctx: Context) -> dict[str, Any]:
    """Send a partial or failed job back to the queue; a partial retrieve asks only for
    what is missing. 409 for a job in any other state."""
    control.retry(ctx.sessions, job_id, ctx.dispatcher, ctx.settings.max_attempts)
    with ctx.sessions() as db:
        return job_summary(db, job_id, responses=False)


def _job(db: Db, job_id: int) -> Job:
    job = db.get(Job, job_id)
    if job is None:
        raise NoSuchJob(f"job {job_id} does not exist")
    return job
