"""The storage SCP's memory, disk and slots stay bounded whatever its peers send."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dsutils import encode
from sqlalchemy import select

from qrfarm.models import OrphanInstance
from qrfarm.scp import StorageScp
from qrfarm.storage import InstanceStorage
from tests.conftest import QRFARM_SCP_AE
from tests.databases import database_url, migrated
from tests.peers import peer_env, require_peer
from tests.peers.dcmtk import STORESCU
from tests.peers.ports import free_port, wait_for_port

from .conftest import NODES, Db
from .senders import send_raw
from .test_process import scp_process, wait_for

SUCCESS, OUT_OF_RESOURCES, SOP_CLASS_NOT_SUPPORTED = 0x0000, 0xA700, 0x0122
MiB = 1 << 20
RSS_LIMIT_KB = 200 * 1024  # the bound: 200 MB
BLOCK = b"\x5a" * MiB


def header(sop_class: str = CTImageStorage, rows: int = 16, columns: int = 16) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = "BOUNDS"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "MR" if sop_class == MRImageStorage else "CT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # for send_c_store
    return ds


def encoded(ds: Dataset) -> bytes:
    raw = encode(ds, False, True)  # as pynetdicom puts it on the wire: no file meta
    assert raw is not None
    return raw


def pixel_data_header(length: int) -> bytes:
    return struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, length)


def write_big_instance(path: Path, pixel_bytes: int) -> Dataset:
    """A Part-10 CT file with ``pixel_bytes`` of pixel data, written a block at a time."""
    ds = header(rows=pixel_bytes // (2 * 16384), columns=16384)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    with path.open("ab") as out:
        out.write(pixel_data_header(pixel_bytes))
        for _ in range(pixel_bytes // MiB):
            out.write(BLOCK)
    return ds


def rss_peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM in /proc/{pid}/status: {Path(f'/proc/{pid}/stat').read_text()}")


def storescu(port: int, *files: Path) -> subprocess.Popen[bytes]:
    require_peer(STORESCU)
    return subprocess.Popen(
        [STORESCU, "-aet", "STORESCU", "-aec", "QRFARMSCP", "127.0.0.1", str(port)]
        + [str(f) for f in files],
        env=peer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def rows(db: Db) -> dict[str, tuple[str, int]]:
    with db.sessions() as session:
        found = session.execute(
            select(OrphanInstance.sop_instance_uid, OrphanInstance.file_path, OrphanInstance.size)
        )
        return {uid: (path, size) for uid, path, size in found}


def stored_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.dcm") if ".incoming" not in p.parts]


@pytest.fixture
def pg_db(tmp_path: Path) -> Iterator[Db]:
    from qrfarm.jobs.nodes import upsert_node

    with database_url("postgresql", tmp_path) as url, migrated(url) as (engine, sessions):
        with sessions() as session, session.begin():
            for spec in NODES:
                upsert_node(session, spec)
        yield Db(url, engine, sessions)


def test_a_1_gib_instance_is_stored_with_the_scp_rss_under_200_mb(
    pg_db: Db, tmp_path: Path
) -> None:
    db = pg_db
    big = tmp_path / "big.dcm"
    ds = write_big_instance(big, 1024 * MiB)
    port = free_port()
    storage = tmp_path / "storage"
    with scp_process(db, storage, port, tmp_path / "scp.log") as scp:
        wait_for_port(port, timeout=30)
        sender = storescu(port, big)
        output, _ = sender.communicate(timeout=600)
        peak = rss_peak_kb(scp.pid)
    assert sender.returncode == 0, output.decode()
    path, size = rows(db)[str(ds.SOPInstanceUID)]
    # The file meta is the SCP's own; the data set is all there.
    assert (storage / path).stat().st_size == size > 1024 * MiB
    assert peak < RSS_LIMIT_KB, f"SCP peak RSS {peak} kB"
    assert not list(storage.rglob("*.part"))


@pytest.fixture
def small_limit_scp(db: Db, storage_root: Path) -> Iterator[StorageScp]:
    service = StorageScp(
        db.sessions,
        InstanceStorage(storage_root),
        ae_title=QRFARM_SCP_AE,
        port=0,
        max_instance_bytes=MiB,
    )
    service.start()
    try:
        yield service
    finally:
        service.stop(drain_timeout=10)


def associate(port: int, sop_class: str, syntax: str = ExplicitVRLittleEndian) -> Association:
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title=QRFARM_SCP_AE)
    assert assoc.is_established
    return assoc


def test_an_instance_over_the_maximum_is_refused_naming_its_size_and_the_limit(
    db: Db, small_limit_scp: StorageScp, storage_root: Path
) -> None:
    too_big = header(rows=1024, columns=1024)
    too_big.PixelData = b"\0" * (2 * MiB)
    small = header()
    small.PixelData = b"\0" * 512
    assoc = associate(small_limit_scp.port, CTImageStorage)
    try:
        answer = assoc.send_c_store(too_big)
        again = assoc.send_c_store(small)  # the association goes on
    finally:
        assoc.release()
    assert answer.Status == OUT_OF_RESOURCES
    size = len(encoded(too_big))
    assert answer.ErrorComment == f"instance of {size} bytes is over the maximum of {MiB}"
    assert again.Status == SUCCESS
    assert set(rows(db)) == {str(small.SOPInstanceUID)}
    assert [p.name for p in stored_files(storage_root)] == [f"{small.SOPInstanceUID}.dcm"]


def test_a_temp_folder_gone_mid_association_answers_out_of_resources_and_goes_on(
    db: Db, scp: StorageScp, storage_root: Path
) -> None:
    first, second, third = header(), header(), header()
    for ds in (first, second, third):
        ds.PixelData = b"\0" * 512
    assoc = associate(scp.port, CTImageStorage)
    try:
        assert assoc.send_c_store(first).Status == SUCCESS
        incoming = scp.context.storage.incoming()
        shutil.rmtree(incoming)  # nowhere to spool the next data set to
        answer = assoc.send_c_store(second)
        assert assoc.is_established, "the association ended instead of an answer"
        incoming.mkdir()
        again = assoc.send_c_store(third)
    finally:
        if assoc.is_established:
            assoc.release()
    assert answer.Status == OUT_OF_RESOURCES
    assert again.Status == SUCCESS
    assert set(rows(db)) == {str(first.SOPInstanceUID), str(third.SOPInstanceUID)}


def deflated_bomb(inflated_bytes: int) -> tuple[Dataset, bytes]:
    """A data set of a few hundred kB that inflates to ``inflated_bytes``."""
    ds = header(rows=inflated_bytes // (2 * 16384), columns=16384)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [compressor.compress(encoded(ds) + pixel_data_header(inflated_bytes))]
    zeros = b"\0" * MiB
    for _ in range(inflated_bytes // MiB):
        parts.append(compressor.compress(zeros))
    parts.append(compressor.flush())
    return ds, b"".join(parts)


def test_a_small_deflated_data_set_that_inflates_hugely_is_refused_without_rss_growth(
    pg_db: Db, tmp_path: Path
) -> None:
    db = pg_db
    ds, deflated = deflated_bomb(600 * MiB)
    assert len(deflated) < MiB
    port = free_port()
    storage = tmp_path / "storage"
    # The process reads its settings file from beside its log.
    (tmp_path / "scp.toml").write_text(f"scp_max_instance_bytes = {256 * MiB}\n")
    with scp_process(db, storage, port, tmp_path / "scp.log") as scp:
        wait_for_port(port, timeout=30)
        before = rss_peak_kb(scp.pid)
        assoc = associate(port, CTImageStorage, DeflatedExplicitVRLittleEndian)
        try:
            status = send_raw(assoc, CTImageStorage, str(ds.SOPInstanceUID), deflated)
        finally:
            assoc.release()
        peak = rss_peak_kb(scp.pid)
    assert status == OUT_OF_RESOURCES
    assert rows(db) == {}
    assert stored_files(storage) == []
    assert peak < RSS_LIMIT_KB, f"SCP peak RSS {peak} kB (before the store: {before} kB)"
    assert peak - before < 64 * 1024, f"SCP RSS grew from {before} kB to {peak} kB"


def test_forty_idle_connections_leave_a_known_pacs_storing(scp: StorageScp, tmp_path: Path) -> None:
    idle: list[socket.socket] = []
    try:
        for _ in range(40):
            # From another loopback address: anonymous, never associating.
            sock = socket.create_connection(
                ("127.0.0.1", scp.port), timeout=5, source_address=("127.0.0.2", 0)
            )
            idle.append(sock)
        time.sleep(0.5)  # all accepted (or closed) by the SCP
        instance = tmp_path / "one.dcm"
        ds = write_big_instance(instance, 2 * MiB)
        sender = storescu(scp.port, instance)
        output, _ = sender.communicate(timeout=60)
        assert sender.returncode == 0, output.decode()
        assert (
            scp.context.storage.path_for(
                str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
            )
        ).exists()
        # And the idle ones are closed by the SCP: a read sees the end.
        for sock in idle:
            sock.settimeout(60)
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1) == b""
    finally:
        for sock in idle:
            sock.close()


def test_an_mr_instance_on_a_ct_context_is_refused(
    db: Db, scp: StorageScp, storage_root: Path
) -> None:
    mr = header(MRImageStorage)
    mr.PixelData = b"\0" * 512
    assoc = associate(scp.port, CTImageStorage)
    try:
        # As send_raw does, but on the CT context with the MR SOP class.
        assoc.accepted_contexts[0].abstract_syntax = MRImageStorage
        status = send_raw(assoc, MRImageStorage, str(mr.SOPInstanceUID), encoded(mr))
    finally:
        assoc.release()
    assert status == SOP_CLASS_NOT_SUPPORTED
    assert rows(db) == {}
    assert stored_files(storage_root) == []


def test_after_sigkill_mid_transfer_and_a_restart_no_file_is_left_without_its_row(
    pg_db: Db, tmp_path: Path
) -> None:
    db = pg_db
    port = free_port()
    storage = tmp_path / "storage"
    small, big = tmp_path / "small.dcm", tmp_path / "big.dcm"
    small_ds = write_big_instance(small, 1 * MiB)
    write_big_instance(big, 256 * MiB)
    log = tmp_path / "scp.log"
    with db.engine.connect() as blocker:
        with scp_process(db, storage, port, log) as scp:
            wait_for_port(port, timeout=30)
            # Rows cannot be written: the small one is stored on disk and waits.
            locking = blocker.begin()
            blocker.exec_driver_sql("LOCK TABLE orphan_instances IN ACCESS EXCLUSIVE MODE")
            first = storescu(port, small)
            wait_for(lambda: bool(stored_files(storage)), 30, "the small file on disk")
            second = storescu(port, big)
            wait_for(
                lambda: any(
                    p.stat().st_size > 8 * MiB for p in (storage / ".incoming").rglob("rx-*")
                ),
                60,
                "the big data set under way",
            )
            os.kill(scp.pid, signal.SIGKILL)
            scp.wait(10)
            # Its backend would finish the insert once the lock is gone: the
            # row dies with the SCP, as it does when the kill comes a moment
            # before the insert is sent.
            blocker.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
            )
            locking.rollback()
        first.communicate(timeout=30)
        second.communicate(timeout=30)
    assert stored_files(storage), "the kill came before any file was stored"
    with scp_process(db, storage, port, tmp_path / "again.log"):
        wait_for_port(port, timeout=30)
        recorded = {path for path, _ in rows(db).values()}
        left = {str(p.relative_to(storage)) for p in stored_files(storage)}
        assert left <= recorded, f"files without their rows: {left - recorded}"
        leftovers = [
            p for p in (storage / ".incoming").rglob("*") if p.is_file() and p.name != ".lock"
        ]
        assert leftovers == []
    # The small one's row was never committed: its file is gone too.
    assert str(small_ds.SOPInstanceUID) not in rows(db)
