"""Recording an instance: one row per job and SOP Instance UID, or an orphan row.

Runs on a Core connection inside the caller's transaction (or, on PostgreSQL,
statement by statement in autocommit): the C-STORE is answered success only
after it commits. The storage SCP and the C-GET path both record through
:func:`record`. A repeat for the same job never makes a second row; it is
counted, and flagged when its bytes differ from the first. Each row points
to the bytes its job received: a job whose bytes differ from what another
sender stored first under the UID gets a file of its own, flagged.

This is the storage SCP's hot path, run once per instance received, so the
statements are built once with bind parameters and run on a Core connection:
the ORM's unit of work and per-call statement building cost more than the
database round trip itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Executable,
    Table,
    bindparam,
    exists,
    select,
    update,
)
from sqlalchemy.orm import Session

from qrfarm.models import (
    Job,
    JobState,
    MatchedBy,
    OrphanInstance,
    ReceivedInstance,
    table,
    utcnow,
)
from qrfarm.models.session import dialect_insert
from qrfarm.storage import StoredFile

from .reconcile import reopen_for_late_arrival

_RECEIVED = table(ReceivedInstance)
_ORPHANS = table(OrphanInstance)
_JOBS = table(Job)
# Ended jobs that an instance arriving late reopens.
_REOPENED_BY_LATE = (JobState.COMPLETED, JobState.PARTIAL)

_INSTANCE_COLUMNS = (
    "sop_instance_uid",
    "sop_class_uid",
    "study_instance_uid",
    "series_instance_uid",
    "transfer_syntax",
    "size",
    "file_path",
    "calling_ae",
    "called_ae",
    "peer_host",
    "move_originator_ae",
    "move_originator_message_id",
)


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


@dataclass(frozen=True)
class Correlation:
    """The jobs an instance belongs to; for an orphan, the move it claimed and why
    it was refused."""

    matches: list[Match]
    claimed_job_id: int | None = None
    refusal: str | None = None


@dataclass(frozen=True)
class Recorded:
    job_ids: list[int]  # the jobs the instance was recorded for (none: an orphan)
    late: list[int]  # of those, jobs already reconciled: for reopen_late


def _parameters(facts: InstanceFacts, stored: StoredFile, file_path: str) -> dict[str, Any]:
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
        "now": utcnow(),
        "differs": stored.differs_from_first,
    }


def _repeat_parameters(facts: InstanceFacts, file_path: str, job_id: int | None) -> dict[str, Any]:
    """Only the repeat's own names: Core turns any parameter named like a column
    into a SET of that column, and a repeat must change nothing of its row
    but the count and the flag."""
    return {
        "repeat_sop_instance_uid": facts.sop_instance_uid,
        "repeat_calling_ae": facts.calling_ae,
        "repeat_file_path": file_path,
        "repeat_job_id": job_id,
    }


def _instance_values() -> dict[str, Any]:
    # Explicit defaults: column defaults are not applied to DML inside a CTE.
    values: dict[str, Any] = {name: bindparam(name) for name in _INSTANCE_COLUMNS}
    # Flagged from the start when other bytes were stored first under this UID.
    return values | {
        "received_at": bindparam("now"),
        "repeat_count": 0,
        "repeat_differs": bindparam("differs"),
    }


def _count_repeat(table: Table, *row: ColumnElement[bool]) -> Executable:
    """The same instance again for an existing row: counted, flagged if its bytes
    differ. Files are named by their bytes once a UID holds two versions, so
    other bytes are another path; the row keeps pointing to its first."""
    return (
        update(table)
        .where(*row)
        .values(
            repeat_count=table.c.repeat_count + 1,
            repeat_differs=table.c.repeat_differs
            | (table.c.file_path != bindparam("repeat_file_path")),
        )
    )


@dataclass(frozen=True)
class _Statements:
    insert_received: Executable  # → the new row's job id, or nothing on a repeat
    insert_and_count: Executable | None  # PostgreSQL: row and count in one statement
    count: Executable  # → the job's state
    repeat_received: Executable
    insert_orphan: Executable  # → the new row's id, or nothing on a repeat
    repeat_orphan: Executable


@cache
def _statements(dialect: str) -> _Statements:
    insert = dialect_insert(dialect)
    insert_received = (
        insert(_RECEIVED)
        .values(
            job_id=bindparam("job_id"), matched_by=bindparam("matched_by"), **_instance_values()
        )
        .on_conflict_do_nothing(index_elements=["job_id", "sop_instance_uid"])
        .returning(_RECEIVED.c.job_id)
    )
    count = (
        update(_JOBS)
        .where(_JOBS.c.id == bindparam("job_id"))
        .values(recorded_count=_JOBS.c.recorded_count + 1, updated_at=bindparam("now"))
    )
    insert_and_count = None
    if dialect == "postgresql":
        inserted = insert_received.cte("inserted")
        counted = (
            count.where(exists(select(inserted.c.job_id))).returning(_JOBS.c.state).cte("counted")
        )
        insert_and_count = select(counted.c.state)
    repeat_received = _count_repeat(
        _RECEIVED,
        _RECEIVED.c.job_id == bindparam("repeat_job_id"),
        _RECEIVED.c.sop_instance_uid == bindparam("repeat_sop_instance_uid"),
    )
    insert_orphan = (
        insert(_ORPHANS)
        .values(
            claimed_job_id=bindparam("claimed_job_id"),
            refusal=bindparam("refusal"),
            **_instance_values(),
        )
        .on_conflict_do_nothing(index_elements=["sop_instance_uid", "calling_ae"])
        .returning(_ORPHANS.c.id)
    )
    repeat_orphan = _count_repeat(
        _ORPHANS,
        _ORPHANS.c.sop_instance_uid == bindparam("repeat_sop_instance_uid"),
        _ORPHANS.c.calling_ae == bindparam("repeat_calling_ae"),
    )
    return _Statements(
        insert_received,
        insert_and_count,
        count.returning(_JOBS.c.state),
        repeat_received,
        insert_orphan,
        repeat_orphan,
    )


def record(
    connection: Connection,
    facts: InstanceFacts,
    stored: StoredFile,
    file_path: str,
    correlation: Correlation,
) -> Recorded:
    """Record the instance for each matched job (an orphan when none).

    On PostgreSQL each row is added in the very statement that counts it for
    its job, so that the storage SCP can record in autocommit: one round trip
    per instance. A late arrival for a job already reconciled is left to
    :func:`reopen_late`, in a transaction of its own.
    """
    statements = _statements(connection.dialect.name)
    parameters = _parameters(facts, stored, file_path)
    matches = correlation.matches
    if not matches:
        parameters["claimed_job_id"] = correlation.claimed_job_id
        parameters["refusal"] = correlation.refusal
        inserted = connection.execute(statements.insert_orphan, parameters).scalar()
        if inserted is None:
            connection.execute(statements.repeat_orphan, _repeat_parameters(facts, file_path, None))
        return Recorded([], [])
    late = []
    for match in matches:
        parameters |= {
            "job_id": match.job_id,
            "matched_by": match.matched_by,
        }
        state = _insert_and_count(connection, statements, parameters)
        if state is None:
            connection.execute(
                statements.repeat_received, _repeat_parameters(facts, file_path, match.job_id)
            )
        elif state in _REOPENED_BY_LATE:
            late.append(match.job_id)
    return Recorded([match.job_id for match in matches], late)


def _insert_and_count(
    connection: Connection, statements: _Statements, parameters: dict[str, Any]
) -> JobState | None:
    """The row, and the job's count if the row is new; the job's state, or
    None when the row was there already."""
    if statements.insert_and_count is not None:
        state = connection.execute(statements.insert_and_count, parameters).scalar()
    elif connection.execute(statements.insert_received, parameters).scalar() is None:
        return None
    else:
        state = connection.execute(statements.count, parameters).scalar()
    return None if state is None else JobState(state)


def reopen_late(session: Session, job_ids: list[int]) -> None:
    """Jobs that got an instance after they were reconciled: reconcile them again."""
    if not job_ids:
        return
    for job in session.scalars(
        select(Job).where(Job.id.in_(job_ids), Job.state.in_(_REOPENED_BY_LATE)).with_for_update()
    ):
        reopen_for_late_arrival(session, job)


def file_is_recorded(connection: Connection, study_uid: str, file_path: str) -> bool:
    """Whether any row (a job's or an orphan's) points to this stored file."""
    return bool(
        connection.execute(
            select(
                exists().where(
                    _RECEIVED.c.study_instance_uid == study_uid,
                    _RECEIVED.c.file_path == file_path,
                )
                | exists().where(
                    _ORPHANS.c.study_instance_uid == study_uid,
                    _ORPHANS.c.file_path == file_path,
                )
            )
        ).scalar()
    )


def unrecorded_check(engine: Engine, study_uid: str, file_path: str) -> Callable[[], bool]:
    """The question put under a stored file's exclusive lock before it is
    removed (:meth:`InstanceStorage.remove_unless_held`): does no row point
    to it? Asked on a connection of its own when called."""

    def unrecorded() -> bool:
        with engine.connect() as connection:
            return not file_is_recorded(connection, study_uid, file_path)

    return unrecorded
