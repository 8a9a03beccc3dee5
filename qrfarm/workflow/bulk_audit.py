"""The audit trail of a bulk action: a row for the action (who, the filter,
how many) and one for each job it touched, naming the job, its node, patient
and study as a single action on that job would."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.jobs.bulk import CHUNK, BulkResult, JobFilter
from qrfarm.models import Job, NodeRecord

from . import audit

# Bulk action -> the name a single action on one job has in the trail.
JOB_ACTIONS = {
    "cancel": "job.cancel",
    "retry": "job.retry",
    "prioritise": "job.prioritise",
}


def _first(identifier: dict[str, object], tag: str) -> str | None:
    element = identifier.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return str(values[0]) if isinstance(values, list) and values and values[0] is not None else None


def record_jobs(
    session: Session, actor: audit.Actor, action: str, job_ids: list[int], detail: str
) -> None:
    """One row per job (the caller's transaction), read a chunk at a time."""
    for start in range(0, len(job_ids), CHUNK):
        rows = session.execute(
            select(Job.id, Job.identifier, NodeRecord.name)
            .join(NodeRecord, NodeRecord.id == Job.node_id)
            .where(Job.id.in_(job_ids[start : start + CHUNK]))
        ).all()
        for job_id, identifier, node in rows:
            audit.record(
                session,
                actor,
                audit.Event(
                    JOB_ACTIONS[action],
                    audit.UPDATE,
                    job_id=job_id,
                    node=node,
                    patient_key=_first(identifier, audit.PATIENT_ID_TAG),
                    study_uid=_first(identifier, audit.STUDY_UID_TAG),
                    detail=detail,
                ),
            )


def record(
    sessions: sessionmaker[Session],
    actor: audit.Actor,
    action: str,
    flt: JobFilter,
    result: BulkResult,
    *,
    summary: bool = True,
    extra: str = "",
) -> None:
    """The action's rows; ``summary``: its own row too (the API's middleware
    writes that one for a call of its route)."""
    detail = f"bulk {action}{extra}: {flt.describe()}"
    with sessions() as session, session.begin():
        if summary:
            audit.record(
                session,
                actor,
                audit.Event(
                    f"jobs.bulk_{action}",
                    audit.UPDATE,
                    node=flt.node,
                    detail=f"{detail}; touched {result.touched}",
                ),
            )
        record_jobs(session, actor, action, result.job_ids, detail)
