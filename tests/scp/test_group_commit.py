"""Group commit: rows of instances stored at once are committed together, a bad
row fails only itself, and a folder is fsynced once for its group."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from qrfarm import storage as storage_module
from qrfarm.jobs import ingest as ingest_module
from qrfarm.jobs.ingest import Outcome, ToRecord, record_stored_batch
from qrfarm.jobs.recording import Correlation, InstanceFacts, Match
from qrfarm.jobs.states import transition
from qrfarm.models import Job, JobState, MatchedBy, OrphanInstance, ReceivedInstance
from qrfarm.sandbox.synthetic import Corpus, SyntheticInstance
from qrfarm.scp import committer as committer_module
from qrfarm.scp.committer import GroupCommitter
from qrfarm.storage import InstanceStorage, StoredFile

from .conftest import Db
from .test_hostile_senders import study_move


def facts_of(instance: SyntheticInstance, size: int) -> InstanceFacts:
    return InstanceFacts(
        sop_class_uid=instance.sop_class_uid,
        sop_instance_uid=instance.sop_uid,
        study_instance_uid=instance.study_uid,
        series_instance_uid=instance.series_uid,
        patient_id="",
        transfer_syntax="1.2.840.10008.1.2.1",
        calling_ae="ORTHANC",
        called_ae="QRFARMSCP",
        peer_host="127.0.0.1",
        originator_ae=None,
        originator_message_id=None,
        size=size,
    )


def stored(storage: InstanceStorage, instance: SyntheticInstance) -> StoredFile:
    """The instance's file linked in place, its folder left to the group."""
    temp = storage.incoming() / f"{instance.sop_uid}.part"
    temp.write_bytes(instance.path.read_bytes())
    return storage.store_file(
        instance.study_uid, instance.series_uid, instance.sop_uid, temp, sync_folder=False
    )


def one_series(corpus: Corpus, count: int) -> list[SyntheticInstance]:
    by_series: dict[str, list[SyntheticInstance]] = {}
    for instance in corpus.instances:
        by_series.setdefault(instance.series_uid, []).append(instance)
    series = max(by_series.values(), key=len)
    assert len(series) >= count
    return series[:count]


def orphan(_: Connection) -> Correlation:
    return Correlation([])


def broken(connection: Connection) -> Correlation:
    # A statement the database refuses: on PostgreSQL it also aborts the
    # transaction, so every row of the group would be lost with it.
    connection.execute(text("SELECT no_such_column FROM jobs"))
    raise AssertionError("the database accepted a bad statement")


def test_a_bad_row_fails_only_itself_and_a_folder_is_synced_once(
    db: Db, storage_root: Path, corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = InstanceStorage(storage_root, fsync=True)
    synced: list[Path] = []
    real_fsync_dir = storage_module._fsync_dir

    def counting_fsync_dir(folder: Path) -> None:
        synced.append(folder)
        real_fsync_dir(folder)

    monkeypatch.setattr(storage_module, "_fsync_dir", counting_fsync_dir)
    first, bad, third = one_series(corpus, 3)
    job, _ = study_move(db, first.study_uid)
    files = [stored(storage, instance) for instance in (first, bad, third)]
    assert synced == [], "the folder was synced before its group"
    assert {f.unsynced_folder for f in files} == {files[0].path.parent}

    def for_job(_: Connection) -> Correlation:
        return Correlation([Match(job.id, MatchedBy.UIDS)])

    rules: list[Callable[[Connection], Correlation]] = [for_job, broken, orphan]
    batch = [
        ToRecord(facts_of(instance, f.size), f, rule)
        for instance, f, rule in zip((first, bad, third), files, rules, strict=True)
    ]
    outcomes = record_stored_batch(db.engine, db.sessions, storage, batch)

    assert outcomes[0] == [job.id]
    assert isinstance(outcomes[1], SQLAlchemyError)
    assert outcomes[2] == []
    assert synced == [files[0].path.parent], "one fsync for the folder of the group"
    with db.sessions() as session:
        assert session.scalars(select(ReceivedInstance.sop_instance_uid)).all() == [first.sop_uid]
        assert session.scalars(select(OrphanInstance.sop_instance_uid)).all() == [third.sop_uid]
        assert session.get_one(Job, job.id).recorded_count == 1
    assert files[0].path.exists() and files[2].path.exists()
    assert not files[1].path.exists(), "the file of the row not committed stayed"
    # Settled: no marks left of files whose rows are in.
    assert not list(storage.incoming().glob("link.*"))


def test_rows_waiting_while_a_group_commits_go_together(
    db: Db, storage_root: Path, corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = InstanceStorage(storage_root, fsync=False)
    sizes: list[int] = []

    def counting_batch(
        engine: Engine,
        sessions: sessionmaker[Session],
        storage: InstanceStorage,
        batch: Sequence[ToRecord],
    ) -> list[Outcome]:
        sizes.append(len(batch))
        return record_stored_batch(engine, sessions, storage, batch)

    monkeypatch.setattr(committer_module, "record_stored_batch", counting_batch)
    committer = GroupCommitter(db.engine, db.engine, db.sessions, storage)
    instances = one_series(corpus, 6)
    files = [stored(storage, instance) for instance in instances]
    first_in = threading.Event()
    others_queued = threading.Event()

    def held(_: Connection) -> Correlation:
        # The first group commits while the others arrive.
        first_in.set()
        assert others_queued.wait(10)
        return Correlation([])

    results: dict[int, list[int]] = {}

    def send(index: int, rule: Callable[[Connection], Correlation]) -> None:
        results[index] = committer.record(facts_of(instances[index], 1), files[index], rule)

    threads = [threading.Thread(target=send, args=(0, held))]
    threads[0].start()
    assert first_in.wait(10)
    for index in range(1, 6):
        threads.append(threading.Thread(target=send, args=(index, orphan)))
        threads[-1].start()
    while len(committer._waiting) < 5:
        threading.Event().wait(0.01)
    others_queued.set()
    for thread in threads:
        thread.join(10)

    assert sizes == [1, 5]
    assert (committer.groups, committer.rows) == (2, 6)
    assert results == {index: [] for index in range(6)}
    with db.sessions() as session:
        assert len(session.scalars(select(OrphanInstance.id)).all()) == 6


def test_a_late_arrival_reopens_its_job_though_the_first_try_fails(
    db: Db, storage_root: Path, corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An instance arriving after its job was reconciled reopens it; a moment's
    failure of that (a deadlock, a blip) is tried again, or the job would keep
    naming as missing an instance it holds."""
    storage = InstanceStorage(storage_root, fsync=True)
    (instance,) = one_series(corpus, 1)
    job, _ = study_move(db, instance.study_uid)
    with db.sessions() as session, session.begin():
        row = session.get_one(Job, job.id)
        transition(row, JobState.RECONCILING)
        transition(row, JobState.PARTIAL, error="1 missing")
        row.missing_uids = [instance.sop_uid]
    real = ingest_module.reopen_late
    tries: list[int] = []

    def flaky(session: Session, job_ids: list[int]) -> None:
        tries.append(len(job_ids))
        if len(tries) == 1:
            raise OperationalError("UPDATE jobs", {}, Exception("deadlock detected"))
        real(session, job_ids)

    monkeypatch.setattr(ingest_module, "reopen_late", flaky)
    file = stored(storage, instance)

    def for_job(_: Connection) -> Correlation:
        return Correlation([Match(job.id, MatchedBy.UIDS)])

    (outcome,) = record_stored_batch(
        db.engine, db.sessions, storage, [ToRecord(facts_of(instance, file.size), file, for_job)]
    )
    assert outcome == [job.id]
    assert len(tries) == 2
    with db.sessions() as session:
        assert session.get_one(Job, job.id).state is not JobState.PARTIAL
