"""Instance storage: what is durable before a row may say the file is there."""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from qrfarm import storage
from qrfarm.errors import StorageFull
from qrfarm.jobs.ingest import discard_unrecorded
from qrfarm.models import upgrade
from qrfarm.storage import InstanceStorage

STUDY, SERIES, SOP = "1.2.3", "1.2.3.4", "1.2.3.4.5"
DATA = b"\0" * 128 + b"DICM" + b"same bytes"


def _placed_by_another_process(store: InstanceStorage) -> Path:
    """The file as another SCP process leaves it between its link and its
    folder's fsync: in place, its folder entry not yet durable."""
    path = store.path_for(STUDY, SERIES, SOP)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(DATA)
    return path


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = storage._fsync_dir

    def spy(folder: Path) -> None:
        calls.append(folder)
        real(folder)

    monkeypatch.setattr(storage, "_fsync_dir", spy)
    return calls


def test_the_same_bytes_found_in_place_have_their_folder_synced(
    tmp_path: Path, synced: list[Path]
) -> None:
    store = InstanceStorage(tmp_path)
    path = _placed_by_another_process(store)
    stored = store.store(STUDY, SERIES, SOP, DATA)
    assert stored.path == path and not stored.created
    assert path.parent in synced


def test_the_same_bytes_found_in_place_leave_their_folder_to_a_group_sync(
    tmp_path: Path, synced: list[Path]
) -> None:
    store = InstanceStorage(tmp_path)
    path = _placed_by_another_process(store)
    temp = store.incoming() / "rx-test.part"
    temp.write_bytes(DATA)
    stored = store.store_file(STUDY, SERIES, SOP, temp, sync_folder=False)
    assert not stored.created
    assert stored.unsynced_folder == path.parent
    assert store.sync_folders([stored]) == {}
    assert path.parent in synced


def test_a_link_that_fails_leaves_no_temp_file_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk full (or any error) at the link into place: refused as such, and
    the temp file (renamed to mark its final place) is gone with it."""
    store = InstanceStorage(tmp_path)
    temp = store.incoming() / "rx-test.part"
    temp.write_bytes(DATA)

    def full(_source: object, _target: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.os, "link", full)
    with pytest.raises(StorageFull):
        store.store_file(STUDY, SERIES, SOP, temp)
    assert [p.name for p in store.incoming().iterdir() if p.name != ".lock"] == []


def test_a_file_whose_row_cannot_be_looked_for_is_kept_for_recovery(tmp_path: Path) -> None:
    """Its row not committed, as far as this store knows, and the database out
    of reach to say whether a row vouches for the file after all (a commit
    whose answer was lost, or another store of the same bytes): the file
    and its mark stay for the next start's recovery, rather than a row being
    left without its file."""
    store = InstanceStorage(tmp_path)
    temp = store.incoming() / "rx-test.part"
    temp.write_bytes(DATA)
    stored = store.store_file(STUDY, SERIES, SOP, temp)
    assert stored.created and stored.pending is not None
    unreachable = create_engine(f"sqlite:///{tmp_path / 'missing' / 'qrfarm.db'}")
    relative = str(stored.path.relative_to(tmp_path))
    discard_unrecorded(unreachable, store, stored, STUDY, relative)
    assert stored.path.exists()
    assert stored.pending.exists()


def test_a_file_another_store_found_in_place_outlives_the_row_that_failed(
    tmp_path: Path,
) -> None:
    """Two stores of the same bytes at once (a PACS sending again on another
    association): the first made the file and its row failed; the second
    found the file in place and is about to commit its own row. The first
    must not remove the file from under the second's row."""
    store = InstanceStorage(tmp_path)
    url = f"sqlite:///{tmp_path / 'qrfarm.db'}"
    upgrade(url)
    engine = create_engine(url)
    first_temp = store.incoming() / "rx-first.part"
    first_temp.write_bytes(DATA)
    first = store.store_file(STUDY, SERIES, SOP, first_temp)
    second_temp = store.incoming() / "rx-second.part"
    second_temp.write_bytes(DATA)
    second = store.store_file(STUDY, SERIES, SOP, second_temp)
    assert first.created and not second.created and second.path == first.path
    relative = str(first.path.relative_to(tmp_path))
    discard_unrecorded(engine, store, first, STUDY, relative)  # no row (yet) says it is there
    assert first.path.exists()
    store.settle(second)  # the second's row committed
    assert first.path.read_bytes() == DATA
    engine.dispose()


def test_a_file_removed_while_a_store_waited_for_it_is_placed_anew(tmp_path: Path) -> None:
    """A store finding the same bytes in place waits while another removes
    the file (holding it exclusively). The inode may outlive its name (a
    second link, the maker's mark): the store must see the name gone and
    place its bytes anew, not take the unnamed inode for the file in place."""
    store = InstanceStorage(tmp_path)
    path = _placed_by_another_process(store)
    os.link(path, tmp_path / "mark")  # the inode keeps a second name
    remover = os.open(path, os.O_RDONLY)
    fcntl.flock(remover, fcntl.LOCK_EX)
    temp = store.incoming() / "rx.part"
    temp.write_bytes(DATA)
    placed: list[storage.StoredFile] = []
    waiting = threading.Thread(
        target=lambda: placed.append(store.store_file(STUDY, SERIES, SOP, temp))
    )
    waiting.start()
    time.sleep(0.3)  # the store is waiting for its shared lock
    path.unlink()
    os.close(remover)
    waiting.join(10)
    [stored] = placed
    assert stored.created and not stored.differs_from_first
    assert path.read_bytes() == DATA
    store.settle(stored)
