"""The jobs list's filter: state, kind, node, destination, batch, reference and
creation time, read from a query string or a form, checked, and applied."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from qrfarm.errors import FieldError
from qrfarm.jobs import bulk
from qrfarm.models import Job, JobKind, JobState, NodeRecord


def _choice(value: str | None, allowed: set[str]) -> str | None:
    return value if value in allowed else None


def _time(value: str | None) -> dt.datetime | None:
    """A datetime-local value (UTC, as the page says), or None if empty or not one."""
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value[:32])
    except ValueError:
        return None
    return parsed.astimezone(dt.UTC).replace(tzinfo=None) if parsed.tzinfo else parsed


@dataclass(frozen=True)
class JobFilter:
    state: str | None = None
    kind: str | None = None
    node: str | None = None
    destination: str | None = None
    batch: int | None = None
    reference: str | None = None
    created_after: dt.datetime | None = None
    created_before: dt.datetime | None = None
    # Ticked on the page: the jobs a bulk action is for, whatever else is set.
    job_ids: tuple[int, ...] | None = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> JobFilter:
        """Unknown or malformed values are dropped, never passed on."""
        batch = (values.get("batch") or "").strip()
        return cls(
            state=_choice(values.get("state"), {s.value for s in JobState}),
            kind=_choice(values.get("kind"), {k.value for k in JobKind}),
            node=(values.get("node") or "")[:64] or None,
            destination=(values.get("destination") or "").strip()[:64] or None,
            batch=int(batch) if batch.isdigit() and len(batch) < 10 else None,
            reference=(values.get("reference") or "")[:255] or None,
            created_after=_time(values.get("created_after")),
            created_before=_time(values.get("created_before")),
        )

    @property
    def created_after_text(self) -> str:
        return self.created_after.strftime("%Y-%m-%dT%H:%M") if self.created_after else ""

    @property
    def created_before_text(self) -> str:
        return self.created_before.strftime("%Y-%m-%dT%H:%M") if self.created_before else ""

    def hidden(self) -> list[tuple[str, str]]:
        """The filter as (name, value) pairs: for links and the bulk form."""
        pairs = [
            ("state", self.state),
            ("kind", self.kind),
            ("node", self.node),
            ("destination", self.destination),
            ("batch", str(self.batch) if self.batch is not None else None),
            ("reference", self.reference),
            ("created_after", self.created_after_text),
            ("created_before", self.created_before_text),
        ]
        return [(k, v) for k, v in pairs if v]

    def for_bulk(self, session: Session) -> bulk.JobFilter:
        """The filter of the Client's bulk actions that names the same jobs. It
        knows no destination or reference: with one of those, the jobs matching
        now are named by their ids."""
        if self.job_ids is not None:
            return bulk.JobFilter(job_ids=self.job_ids)
        if self.destination or self.reference:
            ids = session.scalars(self.query().limit(bulk.MAX_JOB_IDS + 1)).all()
            if len(ids) > bulk.MAX_JOB_IDS:
                raise FieldError(
                    ["form", "destination"],
                    f"more than {bulk.MAX_JOB_IDS} jobs match: narrow the filter",
                )
            return bulk.JobFilter(job_ids=tuple(int(i) for i in ids))
        return bulk.JobFilter(
            node=self.node,
            state=JobState(self.state) if self.state else None,
            kind=JobKind(self.kind) if self.kind else None,
            batch_id=self.batch,
            created_after=self.created_after,
            created_before=self.created_before,
        )

    def query(self) -> Select[Any]:
        query = select(Job.id)
        if self.state:
            query = query.where(Job.state == JobState(self.state))
        if self.kind:
            query = query.where(Job.kind == JobKind(self.kind))
        if self.node:
            query = query.join(NodeRecord, NodeRecord.id == Job.node_id).where(
                NodeRecord.name == self.node
            )
        if self.destination:
            query = query.where(Job.destination == self.destination)
        if self.batch is not None and hasattr(Job, "batch_id"):
            query = query.where(Job.batch_id == self.batch)
        if self.reference:
            query = query.where(Job.external_reference == self.reference)
        if self.created_after:
            query = query.where(Job.created_at >= self.created_after)
        if self.created_before:
            query = query.where(Job.created_at < self.created_before)
        return query

    def page(self, session: Session, limit: int, offset: int) -> tuple[int, list[int]]:
        """How many jobs match, and the ids of one page of them, newest first."""
        query = self.query()
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        ids = session.scalars(query.order_by(Job.id.desc()).limit(limit).offset(offset)).all()
        return total, [int(i) for i in ids]
