"""Recording an instance: one row per job and SOP Instance UID, or an orphan row.

Runs inside the caller's transaction: the C-STORE is answered success only
after it commits. A repeat for the same job never makes a second row; it is
counted, and flagged when its bytes differ from the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from qrfarm.models import Job, JobState, MatchedBy, OrphanInstance, ReceivedInstance, utcnow
from qrfarm.models.session import insert_for
from qrfarm.storage import StoredFile

from .reconcile import reopen_for_late_arrival


@dataclass(frozen=True)
class InstanceFacts:
    """What an incoming instance says about itself and where it came from."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    transfer_syntax: str
    calling_ae: str
    called_ae: str | None
    peer_host: str | None
    originator_ae: str | None
    originator_message_id: int | None
    size: int


@dataclass(frozen=True)
class Match:
    """A job an instance belongs to, and how that was found out."""

    job_id: int
    matched_by: MatchedBy


def _columns(facts: InstanceFacts, stored: StoredFile, file_path: str) -> dict[str, Any]:
    return {
        "sop_instance_uid": facts.sop_instance_uid,
        "sop_class_uid": facts.sop_class_uid,
        "study_instance_uid": facts.study_instance_uid,
        "series_instance_uid": facts.series_instance_uid,
        "transfer_syntax": facts.transfer_syntax,
        "size": stored.size,
        "file_path": file_path,
        "calling_ae": facts.calling_ae,
        "called_ae": facts.called_ae,
        "peer_host": facts.peer_host,
        "move_originator_ae": facts.originator_ae,
        "move_originator_message_id": facts.originator_message_id,
    }


@dataclass(frozen=True)
class Recorded:
    job_ids: list[int]  # the jobs the instance was recorded for (none: an orphan)
    late: list[int]  # of those, jobs already reconciled: for reopen_late


def record(
    session: Session, facts: InstanceFacts, stored: StoredFile, file_path: str, matches: list[Match]
) -> Recorded:
    """Record the instance for each matched job (an orphan when none).

    Each row is added in the statement (PostgreSQL) or the transaction
    (SQLite) that counts it for its job. On PostgreSQL a late arrival for a
    job already reconciled is left to :func:`reopen_late`, in a transaction
    of its own, so that the storage SCP can record in autocommit: one round
    trip per instance.
    """
    columns = _columns(facts, stored, file_path)
    differs = stored.already_there and not stored.same_bytes
    if not matches:
        _record_orphan(session, columns, differs)
        return Recorded([], [])
    postgresql = session.get_bind().dialect.name == "postgresql"
    late = []
    for match in matches:
        if postgresql:
            state = _insert_and_count(session, match, columns)
            inserted = state is not None
            if state in (JobState.COMPLETED, JobState.PARTIAL):
                late.append(match.job_id)
        else:
            inserted = _insert_then_count(session, match, columns)
        if not inserted:
            session.execute(
                update(ReceivedInstance)
                .where(
                    ReceivedInstance.job_id == match.job_id,
                    ReceivedInstance.sop_instance_uid == facts.sop_instance_uid,
                )
                .values(
                    repeat_count=ReceivedInstance.repeat_count + 1,
                    repeat_differs=ReceivedInstance.repeat_differs | differs,
                )
            )
    return Recorded([match.job_id for match in matches], late)


def _insert_and_count(session: Session, match: Match, columns: dict[str, Any]) -> JobState | None:
    """One statement: the row, and the job's count if the row is new (atomic on its own);
    the job's state, or None when the row was there already."""
    inserted = (
        insert_for(session, ReceivedInstance)
        .values(job_id=match.job_id, matched_by=match.matched_by, **columns)
        .on_conflict_do_nothing(index_elements=["job_id", "sop_instance_uid"])
        .returning(ReceivedInstance.job_id)
        .cte("inserted")
    )
    counted = (
        update(Job)
        .where(Job.id == match.job_id, exists(select(inserted.c.job_id)))
        # Explicit: column defaults are not applied to DML inside a CTE.
        .values(recorded_count=Job.recorded_count + 1, updated_at=utcnow())
        .returning(Job.state)
        .cte("counted")
    )
    state = session.execute(select(counted.c.state)).scalar()
    return None if state is None else JobState(state)


def _insert_then_count(session: Session, match: Match, columns: dict[str, Any]) -> bool:
    inserted = session.execute(
        insert_for(session, ReceivedInstance)
        .values(job_id=match.job_id, matched_by=match.matched_by, **columns)
        .on_conflict_do_nothing(index_elements=["job_id", "sop_instance_uid"])
        .returning(ReceivedInstance.id)
    ).scalar()
    if inserted is None:
        return False
    session.execute(
        update(Job).where(Job.id == match.job_id).values(recorded_count=Job.recorded_count + 1)
    )
    job = session.get(Job, match.job_id)
    if job is not None and job.state in (JobState.COMPLETED, JobState.PARTIAL):
        # A late arrival for a job already reconciled reopens it.
        session.refresh(job)
        reopen_for_late_arrival(session, job)
    return True


def reopen_late(session: Session, job_ids: list[int]) -> None:
    """Jobs that got an instance after they were reconciled: reconcile them again."""
    for job in session.scalars(
        select(Job)
        .where(Job.id.in_(job_ids), Job.state.in_([JobState.COMPLETED, JobState.PARTIAL]))
        .with_for_update()
    ):
        reopen_for_late_arrival(session, job)


def _record_orphan(session: Session, columns: dict[str, Any], differs: bool) -> None:
    inserted = session.execute(
        insert_for(session, OrphanInstance)
        .values(**columns)
        .on_conflict_do_nothing(index_elements=["sop_instance_uid", "calling_ae"])
        .returning(OrphanInstance.id)
    ).scalar()
    if inserted is None:
        session.execute(
            update(OrphanInstance)
            .where(
                OrphanInstance.sop_instance_uid == columns["sop_instance_uid"],
                OrphanInstance.calling_ae == columns["calling_ae"],
            )
            .values(
                repeat_count=OrphanInstance.repeat_count + 1,
                repeat_differs=OrphanInstance.repeat_differs | differs,
            )
        )
