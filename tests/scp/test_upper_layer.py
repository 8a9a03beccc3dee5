"""The upper layer as peers speak it, on whichever receive path is under test
(QRFARM_SCP_RECEIVE_PATH): every transfer syntax storescu proposes, PDU sizes
from 4 KiB to 128 KiB, many associations and contexts at once, negotiation
items the SCP answers, and peers that abort mid-data set or never speak."""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, build_context, build_role
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import (
    AsynchronousOperationsWindowNegotiation,
)
from sqlalchemy import func, select

from qrfarm.dicom import Node
from qrfarm.dicom.store_link import StoreLink
from qrfarm.models import OrphanInstance
from qrfarm.sandbox.synthetic import Corpus
from qrfarm.scp import StorageScp
from qrfarm.storage import InstanceStorage
from tests.conftest import QRFARM_SCP_AE
from tests.peers import dataset_bytes, peer_env, require_peer
from tests.peers.dcmtk import STORESCU

from .conftest import Db, limit_of_the_pynetdicom_path
from .senders import association_request, reactor_paused, store_pdus, store_request

DCMCJPEG = "/usr/bin/dcmcjpeg"
DCMCRLE = "/usr/bin/dcmcrle"
VERIFICATION = "1.2.840.10008.1.1"


def storescu(port: int, files: list[Path], *options: str) -> None:
    require_peer(STORESCU)
    sent = subprocess.run(
        [STORESCU, *options, "-aet", "STORESCU", "-aec", QRFARM_SCP_AE, "127.0.0.1", str(port)]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        env=peer_env(),
        timeout=300,
        check=False,
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr


def recorded(db: Db) -> int:
    with db.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(OrphanInstance)) or 0)


def stored_syntaxes(storage_root: Path) -> set[str]:
    return {
        str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        for path in storage_root.rglob("*.dcm")
    }


def ct_files(corpus: Corpus, count: int) -> list[Path]:
    return [i.path for i in corpus.instances if i.modality == "CT"][:count]


@pytest.mark.parametrize(
    ("option", "syntax"),
    [
        ("-xe", ExplicitVRLittleEndian),
        # storescu sends these files (explicit little endian) as they are
        # when offered both: the big endian context is proposed, not used.
        ("-xb", ExplicitVRLittleEndian),
        ("-xi", ImplicitVRLittleEndian),
        ("-xd", DeflatedExplicitVRLittleEndian),
    ],
)
def test_storescu_in_every_uncompressed_syntax_it_proposes(
    db: Db, scp: StorageScp, storage_root: Path, corpus: Corpus, option: str, syntax: str
) -> None:
    files = ct_files(corpus, 3)
    storescu(scp.port, files, option)
    assert recorded(db) == len(files)
    assert stored_syntaxes(storage_root) == {syntax}


@pytest.mark.parametrize(
    ("tool", "options", "propose", "syntax"),
    [
        (DCMCJPEG, ["+e1"], "-xs", JPEGLosslessSV1),
        (DCMCJPEG, ["+eb"], "-xy", JPEGBaseline8Bit),
        (DCMCRLE, [], "-xr", RLELossless),
    ],
)
def test_storescu_with_compressed_instances(
    db: Db,
    scp: StorageScp,
    storage_root: Path,
    corpus: Corpus,
    tmp_path: Path,
    tool: str,
    options: list[str],
    propose: str,
    syntax: str,
) -> None:
    require_peer(tool)
    files = []
    for n, source in enumerate(ct_files(corpus, 2)):
        target = tmp_path / f"{n}.dcm"
        subprocess.run([tool, *options, str(source), str(target)], check=True, env=peer_env())
        files.append(target)
    # Proposes the files' own (compressed) syntax, as a PACS holding them would.
    storescu(scp.port, files, propose)
    assert recorded(db) == len(files)
    assert stored_syntaxes(storage_root) == {syntax}


@pytest.mark.parametrize("max_pdu", [4096, 16384, 131072])
def test_storescu_at_pdu_sizes_from_4_kib_to_128_kib(
    db: Db, scp: StorageScp, corpus: Corpus, max_pdu: int
) -> None:
    files = ct_files(corpus, 5)
    storescu(scp.port, files, "--max-pdu", str(max_pdu), "--max-send-pdu", str(max_pdu))
    assert recorded(db) == len(files)


def test_sixteen_associations_at_once(db: Db, scp: StorageScp, corpus: Corpus) -> None:
    files = [i.path for i in corpus.instances][:64]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: storescu(scp.port, files[n::16]), range(16)))
    assert recorded(db) == len(files)


def test_several_contexts_on_one_association(db: Db, scp: StorageScp, corpus: Corpus) -> None:
    by_class: dict[str, Path] = {}
    for instance in corpus.instances:
        by_class.setdefault(instance.modality, instance.path)
    assert len(by_class) > 1, "the corpus holds one modality only"
    storescu(scp.port, list(by_class.values()))
    assert recorded(db) == len(by_class)


def test_an_association_request_with_128_contexts(scp: StorageScp) -> None:
    ae = AE(ae_title="STORESCU")
    for context in AllStoragePresentationContexts[:127]:
        assert context.abstract_syntax is not None
        ae.add_requested_context(context.abstract_syntax)
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=QRFARM_SCP_AE)
    try:
        assert assoc.is_established
        assert len(assoc.accepted_contexts) == 128
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()


def test_role_selection_and_an_asynchronous_window_are_answered(
    db: Db, scp: StorageScp, corpus: Corpus
) -> None:
    instance = next(i for i in corpus.instances if i.modality == "CT")
    ds = dcmread(instance.path)
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = 5
    window.maximum_number_operations_performed = 5
    role = build_role(ds.SOPClassUID, scu_role=True, scp_role=False)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=QRFARM_SCP_AE, ext_neg=[window, role])
    try:
        assert assoc.is_established
        # Refused cleanly: one operation at a time.
        assert assoc.acceptor.asynchronous_operations == (1, 1)
        assert assoc.send_c_store(ds).Status == 0
    finally:
        assoc.release()
    assert recorded(db) == 1


def test_a_peer_that_aborts_mid_data_set_leaves_nothing(
    db: Db, scp: StorageScp, storage_root: Path, corpus: Corpus
) -> None:
    instance = next(i for i in corpus.instances if i.modality == "CT")
    ds = dcmread(instance.path)
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=QRFARM_SCP_AE)
    assert assoc.is_established
    context = assoc.accepted_contexts[0]
    assert context.context_id is not None
    request = store_request(
        ds.SOPClassUID, ds.SOPInstanceUID, dataset_bytes(instance.path.read_bytes())
    )
    pdus = store_pdus(request, context.context_id, 4096)
    assert assoc.dul.socket is not None and assoc.dul.socket.socket is not None
    raw = assoc.dul.socket.socket
    for pdu in pdus[: len(pdus) // 2]:  # the command and half the data set
        raw.sendall(pdu)
    time.sleep(0.2)
    assoc.abort()
    # The SCP goes on serving, and kept nothing of the cut-short instance.
    others = [i.path for i in corpus.instances if i.sop_uid != instance.sop_uid][:2]
    storescu(scp.port, others)
    assert recorded(db) == 2
    assert not list(storage_root.rglob("*.part"))
    assert not scp.context.storage.path_for(
        instance.study_uid, instance.series_uid, instance.sop_uid
    ).exists()


def test_a_peer_that_connects_and_never_speaks_is_closed(db: Db, storage_root: Path) -> None:
    scp = StorageScp(
        db.sessions,
        InstanceStorage(storage_root),
        ae_title=QRFARM_SCP_AE,
        port=0,
        associate_timeout_s=0.5,
    )
    port = scp.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as silent:
            # Closed by the SCP (not by our timeout): the read ends with no bytes.
            assert silent.recv(1) == b""
    finally:
        scp.stop(drain_timeout=5)


def test_a_command_set_that_never_ends_is_aborted(db: Db, scp: StorageScp, corpus: Corpus) -> None:
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=QRFARM_SCP_AE)
    assert assoc.is_established
    assert assoc.dul.socket is not None and assoc.dul.socket.socket is not None
    raw = assoc.dul.socket.socket
    context_id = assoc.accepted_contexts[0].context_id
    fragment = b"\x00" * 16384
    # PDV: item length, context ID, control header 0x01 (a command, not its last fragment).
    pdv = struct.pack(">LBB", len(fragment) + 2, context_id, 0x01) + fragment
    pdu = struct.pack(">BxL", 0x04, len(pdv)) + pdv
    answered = b""
    raw.settimeout(5)
    try:
        for _ in range(32):  # 512 KiB of one command set
            raw.sendall(pdu)
        answered = raw.recv(16)
    except OSError:
        pass  # reset: the connection was ended
    assoc.abort()
    # An A-ABORT (PDU type 0x07) or the connection closed, well before 512 KiB.
    assert answered[:1] in (b"\x07", b""), answered
    instance = next(i for i in corpus.instances if i.modality == "CT")
    storescu(scp.port, [instance.path])
    assert recorded(db) == 1


def _minimal_store_pdvs(context_id: int, number: int) -> bytes:
    """The PDV items of one whole C-STORE of a minimal CT data set."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.1234.5.{number}"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.1234.5"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.1234.5.0"
    encoded = BytesIO()
    ds.save_as(encoded, implicit_vr=False, little_endian=True)
    request = store_request(ds.SOPClassUID, ds.SOPInstanceUID, encoded.getvalue(), number)
    return b"".join(pdu[6:] for pdu in store_pdus(request, context_id, 1 << 20))


def _open_fds() -> int:
    return sum(1 for _ in Path("/proc/self/fd").iterdir())


def test_many_whole_requests_in_one_pdu_are_not_taken_at_once(
    db: Db, scp: StorageScp, corpus: Corpus
) -> None:
    """The asynchronous operations window is one: a peer that packs 300
    C-STOREs into one P-DATA-TF does not make the SCP open 300 temp files at
    once (it is answered one request at a time, or aborted)."""
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=QRFARM_SCP_AE)
    assert assoc.is_established
    assert assoc.dul.socket is not None and assoc.dul.socket.socket is not None
    raw = assoc.dul.socket.socket
    context_id = assoc.accepted_contexts[0].context_id
    assert context_id is not None
    items = b"".join(_minimal_store_pdvs(context_id, n) for n in range(1, 301))
    before = _open_fds()
    peak = before
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _open_fds())
            time.sleep(0.001)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    raw.sendall(struct.pack(">BxL", 0x04, len(items)) + items)
    time.sleep(2.0)
    done.set()
    watcher.join()
    assoc.abort()
    assert peak - before < 20, (before, peak)
    instance = next(i for i in corpus.instances if i.modality == "CT")
    storescu(scp.port, [instance.path])


def test_a_peer_that_never_reads_its_answers_is_no_longer_read_from(
    scp: StorageScp, receive_path: str, request: pytest.FixtureRequest
) -> None:
    """C-ECHO requests sent on and on, not one answer read (a receive window of
    2 KiB): the SCP's answers wait in bounded buffers, and it stops taking
    requests, so the sender blocks."""
    limit_of_the_pynetdicom_path(
        request,
        receive_path,
        "pynetdicom's DUL thread reads on into a queue of its own while the answers "
        "wait: one reason the asyncio path is the default",
        # Loaded, that thread can fall 5 s behind: the sender then seems blocked.
        strict=False,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.connect(("127.0.0.1", scp.port))
    link = StoreLink(sock, Node(QRFARM_SCP_AE, "127.0.0.1", scp.port), dimse_timeout=5.0)
    link._associate([build_context(VERIFICATION)], "STORESCU", 5.0)
    (context_id,) = link.contexts.values()
    uid = b"1.2.840.10008.1.1\x00"
    echo = (
        struct.pack("<HHI", 0x0000, 0x0002, len(uid))
        + uid
        + struct.pack("<HHIH", 0x0000, 0x0100, 2, 0x0030)  # Command Field: C-ECHO-RQ
        + struct.pack("<HHIH", 0x0000, 0x0110, 2, 1)  # Message ID
        + struct.pack("<HHIH", 0x0000, 0x0800, 2, 0x0101)  # no data set
    )
    pdv = struct.pack(">LBB", len(echo) + 2, context_id, 0x03) + echo
    batch = (struct.pack(">BxL", 0x04, len(pdv)) + pdv) * 1000
    sock.settimeout(5.0)
    blocked = False
    sent = 0
    deadline = time.monotonic() + 35
    try:
        while time.monotonic() < deadline:
            sock.sendall(batch)
            sent += 1000
    except (TimeoutError, ConnectionError):
        blocked = True  # (or ended): either way no longer read from
    finally:
        link.abort()
    assert blocked, f"{sent} requests taken from a peer that reads no answer"


def _association_request(contexts: int) -> bytes:
    """An A-ASSOCIATE-RQ proposing ``contexts`` presentation contexts (IDs
    wrapping past 255 when there are more than 128)."""
    proposed = []
    for number in range(contexts):
        context = build_context(VERIFICATION, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        context.context_id = (2 * number) % 256 + 1
        proposed.append(context)
    return association_request("STORESCU", proposed)


@pytest.mark.parametrize("contexts", [129, 4000])
def test_an_association_request_past_128_contexts_is_not_accepted(
    db: Db, scp: StorageScp, corpus: Corpus, contexts: int
) -> None:
    """PS3.8 allows 128 presentation contexts; a request with more (here up to
    some 350 KiB of them) is refused or aborted, and the SCP serves on."""
    with socket.create_connection(("127.0.0.1", scp.port), timeout=10) as peer:
        try:
            peer.sendall(_association_request(contexts))
            answer = peer.recv(1)
        except ConnectionResetError:
            answer = b""  # closed before all of it was read: not accepted either
    assert answer in (b"\x03", b"\x07", b""), answer
    instance = next(i for i in corpus.instances if i.modality == "CT")
    storescu(scp.port, [instance.path])
    assert recorded(db) == 1


def test_a_slow_link_that_keeps_sending_a_large_pdu_is_not_taken_for_idle(
    db: Db,
    storage_root: Path,
    corpus: Corpus,
    receive_path: str,
    request: pytest.FixtureRequest,
) -> None:
    """The idle timeout is for a peer that sends nothing: a PDU of 256 KiB
    that takes three idle timeouts to come, bytes arriving all along (a slow
    WAN link), is stored, not aborted."""
    limit_of_the_pynetdicom_path(
        request,
        receive_path,
        "pynetdicom's network timeout restarts only when a whole PDU has come: "
        "a link too slow for one PDU per timeout is cut",
    )
    scp = StorageScp(
        db.sessions,
        InstanceStorage(storage_root),
        ae_title=QRFARM_SCP_AE,
        port=0,
        idle_timeout_s=0.5,
    )
    port = scp.start()
    instance = next(i for i in corpus.instances if i.modality == "CT")
    ds = dcmread(instance.path)
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title=QRFARM_SCP_AE)
        assert assoc.is_established
        context_id = assoc.accepted_contexts[0].context_id
        assert context_id is not None
        # Padded to 256 KiB (a private tag): one large data set PDU.
        data = dataset_bytes(instance.path.read_bytes())
        padding = 256 * 1024 - len(data)
        data += struct.pack("<HH2sHL", 0x0009, 0x1010, b"UN", 0, padding - 12) + bytes(padding - 12)
        request = store_request(ds.SOPClassUID, ds.SOPInstanceUID, data)
        command, data_pdu = store_pdus(request, context_id, 1 << 20)
        assert assoc.dul.socket is not None and assoc.dul.socket.socket is not None
        raw = assoc.dul.socket.socket
        with reactor_paused(assoc):  # the answer is read here, not by pynetdicom
            raw.sendall(command)
            piece = len(data_pdu) // 60
            for start in range(0, len(data_pdu), piece):  # 60 pieces, 0.025 s apart: 1.5 s
                raw.sendall(data_pdu[start : start + piece])
                time.sleep(0.025)
            _, answer = assoc.dimse.get_msg(block=True)
        assert isinstance(answer, C_STORE) and answer.Status == 0x0000, answer
        assoc.release()
    finally:
        scp.stop(drain_timeout=5)
    assert recorded(db) == 1
