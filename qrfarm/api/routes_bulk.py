"""/jobs/actions: cancel, retry and re-prioritise every job a filter names."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request, status
from pydantic import BaseModel, ConfigDict, Field

from qrfarm.errors import FieldError
from qrfarm.jobs import bulk
from qrfarm.jobs.bulk import MAX_JOB_IDS, BulkResult, JobFilter
from qrfarm.jobs.priority import HIGHEST, LOWEST
from qrfarm.models import JobKind, JobState
from qrfarm.workflow import audit, bulk_audit

from .deps import Context
from .schemas import UNREADABLE_BODY
from .scopes import needs
from .tokens import Scope

router = APIRouter(prefix="/jobs/actions", tags=["jobs"])


class FilterIn(BaseModel):
    """Which jobs: every field given must hold; at least one must be given."""

    model_config = ConfigDict(extra="forbid")

    node: str | None = Field(default=None, min_length=1, max_length=64)
    state: JobState | None = None
    kind: JobKind | None = None
    batch_id: int | None = Field(default=None, ge=1, le=2**31 - 1)
    created_after: dt.datetime | None = Field(
        default=None, description="Created at or after (UTC when no offset is given)."
    )
    created_before: dt.datetime | None = Field(default=None, description="Created before.")
    job_ids: list[int] | None = Field(default=None, max_length=MAX_JOB_IDS)


class PriorityIn(FilterIn):
    priority: int = Field(ge=LOWEST, le=HIGHEST, description="50 and above: urgent; below 0: bulk.")


class BulkOut(BaseModel):
    touched: int = Field(description="How many jobs the action changed.")
    job_ids: list[int]


def _utc(value: dt.datetime | None, name: str) -> dt.datetime | None:
    if value is None or value.tzinfo is None:
        return value
    try:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    except OverflowError as exc:
        raise FieldError(["body", name], "outside the years 1 to 9999 in UTC") from exc


def job_filter(body: FilterIn) -> JobFilter:
    return JobFilter(
        node=body.node,
        state=body.state,
        kind=body.kind,
        batch_id=body.batch_id,
        created_after=_utc(body.created_after, "created_after"),
        created_before=_utc(body.created_before, "created_before"),
        job_ids=None if body.job_ids is None else tuple(body.job_ids),
    )


def _answer(
    ctx: Context, request: Request, action: str, flt: JobFilter, result: BulkResult, extra: str = ""
) -> dict[str, Any]:
    # The call itself is recorded by the audit middleware; each job here.
    actor = audit.Actor(
        "token",
        getattr(request.state, "token_name", "?"),
        request.client.host if request.client else None,
    )
    bulk_audit.record(ctx.sessions, actor, action, flt, result, summary=False, extra=extra)
    return {"touched": result.touched, "job_ids": result.job_ids}


@router.post(
    "/cancel",
    status_code=status.HTTP_200_OK,
    response_model=BulkOut,
    responses=UNREADABLE_BODY,
    **needs(Scope.SUBMIT, ("jobs.bulk_cancel", "U")),
)
def cancel_jobs(body: FilterIn, ctx: Context, request: Request) -> dict[str, Any]:
    """Cancel every job the filter names that has not ended: a queued one ends at
    once, a running one gets C-CANCEL."""
    flt = job_filter(body)
    return _answer(ctx, request, "cancel", flt, bulk.cancel(ctx.sessions, flt))


@router.post(
    "/retry",
    status_code=status.HTTP_200_OK,
    response_model=BulkOut,
    responses=UNREADABLE_BODY,
    **needs(Scope.SUBMIT, ("jobs.bulk_retry", "U")),
)
def retry_jobs(body: FilterIn, ctx: Context, request: Request) -> dict[str, Any]:
    """Retry every partial or failed job the filter names (a partial retrieve asks
    only for what is missing)."""
    flt = job_filter(body)
    result = bulk.retry(ctx.sessions, flt, ctx.dispatcher, ctx.settings.max_attempts)
    return _answer(ctx, request, "retry", flt, result)


@router.post(
    "/prioritise",
    status_code=status.HTTP_200_OK,
    response_model=BulkOut,
    responses=UNREADABLE_BODY,
    **needs(Scope.SUBMIT, ("jobs.bulk_prioritise", "U")),
)
def prioritise_jobs(body: PriorityIn, ctx: Context, request: Request) -> dict[str, Any]:
    """Give every job the filter names that has not ended this priority; queued
    ones are sent again in their new lane."""
    flt = job_filter(body)
    result = bulk.reprioritise(ctx.sessions, flt, body.priority, ctx.dispatcher)
    return _answer(ctx, request, "prioritise", flt, result, extra=f" to {body.priority}")
