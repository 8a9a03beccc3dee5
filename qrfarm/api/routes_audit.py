"""GET /audit: the audit trail, newest first, filtered (admin)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel

from qrfarm.errors import FieldError
from qrfarm.workflow import audit

from .deps import Db
from .schemas import Page
from .scopes import needs
from .tokens import Scope

router = APIRouter(tags=["audit"])
Text = Annotated[str | None, Query(max_length=255)]


class AuditOut(BaseModel):
    id: int
    at: str
    action: str
    action_code: str
    outcome: str
    actor_kind: str
    actor: str
    source: str | None
    job_id: int | None
    node: str | None
    patient_key: str | None
    study_uid: str | None
    detail: str | None


def _naive_utc(value: dt.datetime | None, name: str) -> dt.datetime | None:
    if value is None or value.tzinfo is None:
        return value
    try:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    except OverflowError as exc:
        raise FieldError(["query", name], "outside the years 1 to 9999 in UTC") from exc


@router.get("/audit", response_model=Page[AuditOut], **needs(Scope.ADMIN, ("audit.read", "R")))
def read_audit(
    db: Db,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    actor: Text = None,
    actor_kind: Literal["token", "os_user", "hl7", "scheduler"] | None = None,
    action: Annotated[
        str | None, Query(max_length=64, description='A name, or a prefix ending in "."')
    ] = None,
    outcome: Literal["success", "refused", "failed"] | None = None,
    job_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    node: Annotated[str | None, Query(max_length=64)] = None,
    patient_key: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> dict[str, Any]:
    """Who did what, to which job, node or patient, when, from where, with what outcome."""
    filters = audit.Filters(
        since=_naive_utc(since, "since"),
        until=_naive_utc(until, "until"),
        actor=actor,
        actor_kind=actor_kind,
        action=action,
        outcome=outcome,
        job_id=job_id,
        node=node,
        patient_key=patient_key,
    )
    rows, total = audit.search(db, filters, limit=limit, offset=offset)
    return {
        "items": [audit.document(r) for r in rows],
        "total": total,
        "limit": limit,
        "offset": offset,
    }
