"""The audit trail's writer and reader.

Every face records what it did through :func:`record` (inside the caller's
transaction) or :func:`write` (a transaction of its own, after the fact): who
(:class:`Actor`), what and on which job, node or patient (:class:`Event`),
when, from where, and the outcome. The rows hold patient keys, because that
is what an audit trail is for; nothing here logs them.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
import socket
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.models import AuditEvent, Job, NodeRecord, Prefetch, utcnow

SUCCESS, REFUSED, FAILED = "success", "refused", "failed"
OUTCOMES = (SUCCESS, REFUSED, FAILED)
# ATNA's EventActionCode.
CREATE, READ, UPDATE, DELETE, EXECUTE = "C", "R", "U", "D", "E"
PATIENT_ID_TAG, STUDY_UID_TAG = "00100020", "0020000D"


@dataclass(frozen=True)
class Actor:
    """Who acted: ``kind`` is token, os_user, hl7 or scheduler; ``source`` is
    where from (a client address, an HL7 sender's address, a host)."""

    kind: str
    name: str
    source: str | None = None


@dataclass(frozen=True)
class Event:
    action: str
    action_code: str
    outcome: str = SUCCESS
    job_id: int | None = None
    node: str | None = None
    patient_key: str | None = None
    study_uid: str | None = None
    detail: str | None = None


def os_user() -> Actor:
    """The person at a terminal: their login name, on this host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return Actor("os_user", user, socket.gethostname())


def scheduler() -> Actor:
    return Actor("scheduler", f"scheduler pid {os.getpid()}", socket.gethostname())


def _cut(value: str | None, size: int) -> str | None:
    return None if value is None else value[:size]


def record(session: Session, actor: Actor, event: Event) -> None:
    """Add the row to the caller's transaction."""
    session.add(
        AuditEvent(
            at=utcnow(),
            action=event.action[:64],
            action_code=event.action_code,
            outcome=event.outcome,
            actor_kind=actor.kind[:16],
            actor=actor.name[:255],
            source=_cut(actor.source, 255),
            job_id=event.job_id,
            node=_cut(event.node, 64),
            patient_key=_cut(event.patient_key, 64),
            study_uid=_cut(event.study_uid, 64),
            detail=event.detail,
        )
    )


def write(sessions: sessionmaker[Session], actor: Actor, event: Event) -> None:
    """Record in a transaction of its own."""
    with sessions() as session, session.begin():
        record(session, actor, event)


def _first(identifier: dict[str, Any], tag: str) -> str | None:
    values = (identifier.get(tag) or {}).get("Value") or []
    return str(values[0]) if values and values[0] is not None else None


def job_objects(session: Session, job_id: int) -> dict[str, Any]:
    """What an event about a job names: the job, its node, its patient and study."""
    row = session.execute(
        select(Job.identifier, Job.prefetch_id, NodeRecord.name)
        .join(NodeRecord, NodeRecord.id == Job.node_id)
        .where(Job.id == job_id)
    ).first()
    if row is None:
        return {"job_id": job_id}
    identifier, prefetch_id, node = row
    patient = _first(identifier, PATIENT_ID_TAG)
    if patient is None and prefetch_id is not None:
        patient = session.scalar(select(Prefetch.patient_id).where(Prefetch.id == prefetch_id))
    return {
        "job_id": job_id,
        "node": node,
        "patient_key": patient,
        "study_uid": _first(identifier, STUDY_UID_TAG),
    }


def prefetch_objects(session: Session, prefetch_id: int) -> dict[str, Any]:
    patient = session.scalar(select(Prefetch.patient_id).where(Prefetch.id == prefetch_id))
    return {"patient_key": patient, "detail": f"prefetch {prefetch_id}"}


@dataclass
class Filters:
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    actor: str | None = None
    actor_kind: str | None = None
    action: str | None = None  # a name, or a prefix ending in a dot ("job.")
    outcome: str | None = None
    job_id: int | None = None
    node: str | None = None
    patient_key: str | None = None

    def apply(self, query: Select[Any]) -> Select[Any]:
        if self.since is not None:
            query = query.where(AuditEvent.at >= self.since)
        if self.until is not None:
            query = query.where(AuditEvent.at < self.until)
        for column, value in (
            (AuditEvent.actor, self.actor),
            (AuditEvent.actor_kind, self.actor_kind),
            (AuditEvent.outcome, self.outcome),
            (AuditEvent.job_id, self.job_id),
            (AuditEvent.node, self.node),
            (AuditEvent.patient_key, self.patient_key),
        ):
            if value is not None:
                query = query.where(column == value)
        if self.action is not None:
            if self.action.endswith("."):
                query = query.where(AuditEvent.action.startswith(self.action, autoescape=True))
            else:
                query = query.where(AuditEvent.action == self.action)
        return query


def search(
    session: Session, filters: Filters, *, limit: int = 100, offset: int = 0
) -> tuple[list[AuditEvent], int]:
    """Rows matching ``filters``, newest first, and how many match in all."""
    query = filters.apply(select(AuditEvent))
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(limit).offset(offset)
    ).all()
    return list(rows), total


def document(row: AuditEvent) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": row.at.isoformat() + "Z",
        "action": row.action,
        "action_code": row.action_code,
        "outcome": row.outcome,
        "actor_kind": row.actor_kind,
        "actor": row.actor,
        "source": row.source,
        "job_id": row.job_id,
        "node": row.node,
        "patient_key": row.patient_key,
        "study_uid": row.study_uid,
        "detail": row.detail,
    }


def purge(sessions: sessionmaker[Session], retention_days: int) -> int:
    """Remove rows older than the retention (0 keeps everything); how many went."""
    if retention_days <= 0:
        return 0
    cutoff = utcnow() - dt.timedelta(days=retention_days)
    with sessions() as session, session.begin():
        result = session.execute(delete(AuditEvent).where(AuditEvent.at < cutoff))
    return int(getattr(result, "rowcount", 0) or 0)
