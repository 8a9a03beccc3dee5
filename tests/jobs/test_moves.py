"""C-MOVE Message IDs: handed out by the database, one move each, never 0."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session, sessionmaker

from qrfarm.jobs.leases import claim
from qrfarm.jobs.moves import allocate_message_id, release_message_id
from qrfarm.jobs.policy import JobPolicy
from qrfarm.models import Attempt, MoveMessageId, utcnow

from .conftest import add_job


def begin(sessions: sessionmaker[Session], calling_ae: str = "QRFARM") -> tuple[int, int]:
    """A new attempt of a new move job; (attempt id, its Message ID)."""
    job_id = add_job(sessions)
    with sessions() as session, session.begin():
        # As the runner does: claim the job (an attempt), then reserve its Message ID.
        claimed = claim(session, job_id, "test-worker", JobPolicy())
        assert claimed is not None
        attempt = session.get_one(Attempt, claimed[0].attempt_id)
        allocate_message_id(session, attempt, calling_ae)
        assert attempt.message_id is not None
        return attempt.id, attempt.message_id


def test_running_moves_of_one_calling_ae_get_distinct_ids(
    sessions: sessionmaker[Session],
) -> None:
    ids = [begin(sessions)[1] for _ in range(5)]
    assert len(set(ids)) == 5
    assert 0 not in ids


def test_another_calling_ae_has_ids_of_its_own(sessions: sessionmaker[Session]) -> None:
    _, first = begin(sessions, "QRFARM")
    _, other = begin(sessions, "QRFARM2")
    assert first == other == 1


def test_after_the_last_id_the_count_starts_again_at_1_not_0(
    sessions: sessionmaker[Session],
) -> None:
    begin(sessions)
    with sessions() as session, session.begin():
        row = session.get_one(MoveMessageId, ("QRFARM", 1))
        row.message_id = 0xFFFF  # as if 65,534 moves had gone before
    _, wrapped = begin(sessions)
    assert wrapped == 1


def test_a_released_id_still_names_its_move_until_the_late_window_passes(
    sessions: sessionmaker[Session],
) -> None:
    attempt_id, message_id = begin(sessions)
    with sessions() as session, session.begin():
        release_message_id(session, session.get_one(Attempt, attempt_id))
        row = session.get_one(MoveMessageId, ("QRFARM", message_id))
        assert row.released_at is not None
        row.message_id = 0xFFFF  # the next candidate is 1 again, as above
    job_id = add_job(sessions)
    with sessions() as session, session.begin():
        attempt = Attempt(job_id=job_id, number=1)
        session.add(attempt)
        session.flush()
        # Within the window the released one is kept: 1 is free, so 1 is taken.
        assert allocate_message_id(session, attempt, "QRFARM", late_window_s=3600) == 1
        kept = session.get(MoveMessageId, ("QRFARM", 0xFFFF))
        assert kept is not None
        kept.released_at = utcnow() - dt.timedelta(hours=2)
    job_id = add_job(sessions)
    with sessions() as session, session.begin():
        attempt = Attempt(job_id=job_id, number=1)
        session.add(attempt)
        session.flush()
        allocate_message_id(session, attempt, "QRFARM", late_window_s=3600)
        # Past the window its row is gone: the ID may name another move.
        assert session.get(MoveMessageId, ("QRFARM", 0xFFFF)) is None
