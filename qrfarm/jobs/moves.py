"""C-MOVE Message IDs, handed out by the database so that they name one move.

Message IDs are 16-bit and unique only per association; the storage SCP
finds the move a C-STORE belongs to by (Move Originator AE Title, Move
Originator Message ID). So the database hands them out: unique per calling
AE title across the farm over running and recently ended moves (the primary
key says so), never 0 (Orthanc leaves the originator out for 0).
"""

from __future__ import annotations

import datetime as dt
import random

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from qrfarm.errors import NoMessageIdFree
from qrfarm.models import Attempt, Job, JobState, MoveMessageId, utcnow

MAX_TRIES = 64


def allocate_message_id(
    session: Session, attempt: Attempt, calling_ae: str, *, late_window_s: float = 3600.0
) -> int:
    """Reserve a Message ID for ``attempt`` and record it on the attempt.

    Runs in its own savepoints; the caller commits (before sending the move).
    """
    cutoff = utcnow() - dt.timedelta(seconds=late_window_s)
    session.execute(
        delete(MoveMessageId).where(
            MoveMessageId.calling_ae == calling_ae,
            MoveMessageId.released_at.is_not(None),
            MoveMessageId.released_at < cutoff,
        )
    )
    last = session.scalar(
        select(func.max(MoveMessageId.message_id)).where(MoveMessageId.calling_ae == calling_ae)
    )
    candidate = (last or 0) % 0xFFFF + 1
    for _ in range(MAX_TRIES):
        try:
            with session.begin_nested():
                session.add(
                    MoveMessageId(
                        calling_ae=calling_ae,
                        message_id=candidate,
                        attempt_id=attempt.id,
                        job_id=attempt.job_id,
                    )
                )
        except IntegrityError:
            candidate = random.randint(1, 0xFFFF)
            continue
        attempt.message_id = candidate
        attempt.calling_ae = calling_ae
        return candidate
    raise NoMessageIdFree(f"no free C-MOVE Message ID for calling AE {calling_ae}")


def release_message_id(session: Session, attempt: Attempt) -> None:
    """Mark the attempt's Message ID ended; it still names the move for the late window."""
    session.execute(
        update(MoveMessageId)
        .where(MoveMessageId.attempt_id == attempt.id, MoveMessageId.released_at.is_(None))
        .values(released_at=utcnow())
    )


def release_lost_message_ids(session: Session) -> int:
    """Release the Message IDs of attempts that can send no more: ended, given
    up by their worker (lease expired), or followed by a newer attempt. Run by
    the sweeper, so that a dead worker's ID names its move only for the late
    window, not for ever. Returns how many were released."""
    now = utcnow()
    attempt, job = Attempt.__table__, Job.__table__
    newer = (
        select(attempt.c.id)
        .where(attempt.c.job_id == MoveMessageId.job_id, attempt.c.id > MoveMessageId.attempt_id)
        .exists()
    )
    lost = (
        select(attempt.c.id)
        .join(job, job.c.id == attempt.c.job_id)
        .where(
            attempt.c.id == MoveMessageId.attempt_id,
            or_(
                attempt.c.ended_at.is_not(None),
                job.c.state != JobState.RUNNING,
                job.c.lease_expires_at < now,
            ),
        )
        .exists()
    )
    result = session.execute(
        update(MoveMessageId)
        .where(MoveMessageId.released_at.is_(None), or_(lost, newer))
        .values(released_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)
