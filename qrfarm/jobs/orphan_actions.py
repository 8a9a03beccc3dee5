"""An operator's decisions on orphans (instances that matched no job): give a
sender's instances of one study to a job, or discard them.

Assigned instances become the job's records (matched ``late``, as claimed
orphans are) and an ended job is reconciled again with them. Discarded ones
lose their row, and their file when no job's record points to it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from sqlalchemy import delete, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.errors import Conflict, NoSuchJob, NotFound
from qrfarm.models import Job, JobKind, MatchedBy, OrphanInstance, ReceivedInstance, table
from qrfarm.models.session import insert_for
from qrfarm.storage import InstanceStorage

from .orphans import _COPIED
from .reconcile import reopen_for_late_arrival
from .recording import unrecorded_check

log = logging.getLogger(__name__)

# How long a discard waits for a store holding an orphan's file (a commit's time).
HOLD_WAIT_S = 5.0


def _group(session: Session, calling_ae: str, study_uid: str) -> list[OrphanInstance]:
    rows = list(
        session.scalars(
            select(OrphanInstance)
            .where(
                OrphanInstance.calling_ae == calling_ae,
                OrphanInstance.study_instance_uid == study_uid,
                OrphanInstance.matched_job_id.is_(None),
            )
            .order_by(OrphanInstance.received_at, OrphanInstance.id)
            .with_for_update()
        )
    )
    if not rows:
        raise NotFound("no orphans of that calling AE title and study are left")
    return rows


def assign(session: Session, calling_ae: str, study_uid: str, job_id: int) -> int:
    """Give the group's orphans to a move or get job; how many records it gained."""
    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None:
        raise NoSuchJob(f"job {job_id} does not exist")
    if job.kind is JobKind.FIND:
        raise Conflict(f"job {job_id} is a find; only a move or a get records instances")
    held = set(
        session.scalars(
            select(ReceivedInstance.sop_instance_uid).where(ReceivedInstance.job_id == job_id)
        )
    )
    rows = {}
    for orphan in _group(session, calling_ae, study_uid):
        orphan.matched_job_id = job_id
        if orphan.sop_instance_uid in held or orphan.sop_instance_uid in rows:
            continue
        rows[orphan.sop_instance_uid] = {name: getattr(orphan, name) for name in _COPIED} | {
            "job_id": job_id,
            "matched_by": MatchedBy.LATE,
        }
    if rows:
        session.execute(
            insert_for(session, table(ReceivedInstance)).on_conflict_do_nothing(
                index_elements=["job_id", "sop_instance_uid"]
            ),
            list(rows.values()),
        )
    job.recorded_count = (
        session.scalar(select(func.count()).where(ReceivedInstance.job_id == job_id)) or 0
    )
    reopen_for_late_arrival(session, job)
    log.info("job %d: %d orphan(s) assigned by an operator", job_id, len(rows))
    return len(rows)


def discard(
    sessions: sessionmaker[Session], calling_ae: str, study_uid: str, storage_root: Path
) -> int:
    """Remove the group's orphans, then the files no record needs any more;
    how many rows went.

    A file goes only after the deletion is committed (a failed commit leaves
    rows and files as they were), and then only under the rule every removal
    of a stored file follows (:meth:`InstanceStorage.remove_unless_held`):
    not while a store that found it in place holds it to commit its own row,
    nor once any row, a job's or an orphan's, points to it."""
    with sessions() as session, session.begin():
        rows = _group(session, calling_ae, study_uid)
        files = {(row.study_instance_uid, row.file_path) for row in rows}
        session.execute(delete(OrphanInstance).where(OrphanInstance.id.in_([r.id for r in rows])))
    root = storage_root.resolve()
    engine = sessions.kw["bind"]
    for study, relative in files:
        target = (root / relative).resolve()
        # Only files inside the storage root: a row's path is never followed out of it.
        if not target.is_relative_to(root):
            continue
        try:
            outcome = _remove_once_free(target, unrecorded_check(engine, study, relative))
        except (OSError, SQLAlchemyError) as exc:
            # The rows are gone already: the other files are still tried.
            log.warning("orphan file %s kept: %s", relative, type(exc).__name__)
            continue
        if outcome == "held":
            log.warning("orphan file %s kept: a store still holds it", relative)
    return len(rows)


def _remove_once_free(
    target: Path, unrecorded: Callable[[], bool]
) -> Literal["removed", "held", "recorded"]:
    """Remove ``target`` as :meth:`InstanceStorage.remove_unless_held` does,
    waiting up to HOLD_WAIT_S for a store holding it: it holds it only until
    its own row commits (and the file stays) or fails (and, found in place, it
    would leave the file to no row at all)."""
    deadline = time.monotonic() + HOLD_WAIT_S
    while True:
        outcome = InstanceStorage.remove_unless_held(target, unrecorded)
        if outcome != "held" or time.monotonic() >= deadline:
            return outcome
        time.sleep(0.05)
