"""An operator discarding orphans: the rows go, and a file goes only once
nothing can still need it (the deletion committed, no row pointing to it, no
store holding it while it commits its own row)."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.jobs import orphan_actions
from qrfarm.models import OrphanInstance, utcnow

STUDY = "1.2.9"


def _orphan(sessions: sessionmaker[Session], storage: Path, uid: str) -> Path:
    relative = f"{STUDY}/{STUDY}.1/{uid}.dcm"
    path = storage / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"instance " + uid.encode())
    with sessions() as session, session.begin():
        session.add(
            OrphanInstance(
                sop_instance_uid=uid,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                study_instance_uid=STUDY,
                series_instance_uid=f"{STUDY}.1",
                transfer_syntax="1.2.840.10008.1.2.1",
                size=path.stat().st_size,
                file_path=relative,
                calling_ae="PACS",
                received_at=utcnow(),
            )
        )
    return path


def _orphans(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(OrphanInstance)) or 0


def test_discarded_orphans_lose_their_rows_and_files(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    files = [_orphan(sessions, tmp_path, f"{STUDY}.1.{n}") for n in (1, 2)]

    assert orphan_actions.discard(sessions, "PACS", STUDY, tmp_path) == 2

    assert _orphans(sessions) == 0
    assert not any(path.exists() for path in files)


def test_a_discard_whose_commit_fails_keeps_the_rows_and_their_files(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """The files went before the deletion was committed: a commit that failed
    left rows pointing to nothing."""
    path = _orphan(sessions, tmp_path, f"{STUDY}.1.1")

    def refuse(session: Session) -> None:
        raise RuntimeError("the database went away at commit")

    event.listen(sessions, "before_commit", refuse)
    try:
        with pytest.raises(RuntimeError, match="went away"):
            orphan_actions.discard(sessions, "PACS", STUDY, tmp_path)
    finally:
        event.remove(sessions, "before_commit", refuse)

    assert _orphans(sessions) == 1
    assert path.read_bytes() == b"instance " + f"{STUDY}.1.1".encode()


def test_a_file_a_store_holds_while_committing_its_row_is_not_removed(
    sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that found the same instance's file in place holds it (a shared
    lock) until its own row commits: the discard must not remove the file
    from under that row."""
    monkeypatch.setattr(orphan_actions, "HOLD_WAIT_S", 0.3)
    path = _orphan(sessions, tmp_path, f"{STUDY}.1.1")
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        assert orphan_actions.discard(sessions, "PACS", STUDY, tmp_path) == 1
    finally:
        os.close(fd)

    assert _orphans(sessions) == 0
    assert path.exists()


def test_a_file_whose_holder_lets_go_without_a_row_is_removed_once_free(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """The store holding the file found it in place and its own row failed:
    it leaves the file (the bytes were an earlier record's), so the discard
    waits for it to let go and then removes the file no row points to."""
    path = _orphan(sessions, tmp_path, f"{STUDY}.1.1")
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    threading.Timer(0.3, os.close, args=(fd,)).start()

    assert orphan_actions.discard(sessions, "PACS", STUDY, tmp_path) == 1

    assert not path.exists()
