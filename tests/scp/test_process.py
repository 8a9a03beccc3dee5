"""`qrfarm scp` as its own process: SIGTERM drains, several processes share one port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import func, select

from qrfarm.dicom import Connection, Node, Operation, qr_contexts
from qrfarm.errors import AssociationAborted, AssociationRejected, PeerUnreachable
from qrfarm.models import OrphanInstance
from qrfarm.sandbox.synthetic import Corpus
from tests.peers import peer_env, require_peer
from tests.peers.dcmtk import STORESCU
from tests.peers.ports import free_port, wait_for_port

from .conftest import Db


@contextmanager
def scp_process(
    db: Db, storage_root: Path, port: int, log: Path, *args: str
) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "QRFARM_DATABASE_URL": db.url,
        "QRFARM_STORAGE_ROOT": str(storage_root),
        "QRFARM_SCP_PORT": str(port),
        "QRFARM_ALLOWED_HOSTS": "127.0.0.1",
        "QRFARM_CONFIG": str(log.with_suffix(".toml")),  # none: nodes come from the database
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "qrfarm.cli", "-v", "scp", *args],
            env=env,
            stdout=out,
            stderr=out,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def sender(port: int, files: list[Path]) -> subprocess.Popen[bytes]:
    require_peer(STORESCU)
    return subprocess.Popen(
        [
            STORESCU,
            "-aet",
            "STORESCU",
            "-aec",
            "QRFARMSCP",
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        env=peer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def send_at_once(port: int, files: list[Path], senders: int) -> None:
    """``senders`` storescu processes at once, each a share of ``files``; all succeed."""
    with ThreadPoolExecutor(senders) as pool:
        started = list(pool.map(lambda n: sender(port, files[n::senders]), range(senders)))
    for process in started:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output.decode()


def refuses_echo(port: int) -> bool:
    try:
        with Connection.open(
            Node("QRFARMSCP", "127.0.0.1", port),
            qr_contexts([Operation.ECHO]),
            calling_ae="STORESCU",
        ):
            return False
    except (PeerUnreachable, AssociationRejected, AssociationAborted):
        return True


def recorded(db: Db) -> int:
    with db.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(OrphanInstance)) or 0)


def test_sigterm_lets_the_stores_in_flight_finish_and_refuses_new_ones(
    db: Db, tmp_path: Path, corpus: Corpus
) -> None:
    port = free_port()
    files = [i.path for i in corpus.studies()[corpus.large_study_uid]]
    with scp_process(db, tmp_path / "storage", port, tmp_path / "scp.log") as scp:
        wait_for_port(port, timeout=30)
        storescu = sender(port, files)
        deadline = time.monotonic() + 60
        while recorded(db) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        scp.send_signal(signal.SIGTERM)
        # Refused from the moment the signal is handled (rejected while the
        # listening socket is being closed, then not even connected).
        wait_for(lambda: refuses_echo(port), 10, "the SCP to refuse new associations")
        output, _ = storescu.communicate(timeout=120)
        assert scp.wait(60) == 0, (tmp_path / "scp.log").read_text()
    assert storescu.returncode == 0, output.decode()
    assert recorded(db) == len(files)
    assert len(list((tmp_path / "storage").rglob("*.dcm"))) == len(files)


def test_two_scp_processes_share_one_port_database_and_storage(
    db: Db, tmp_path: Path, corpus: Corpus
) -> None:
    port = free_port()
    logs = [tmp_path / "scp1.log", tmp_path / "scp2.log"]
    files = [i.path for i in corpus.instances]
    with (
        scp_process(db, tmp_path / "storage", port, logs[0]),
        scp_process(db, tmp_path / "storage", port, logs[1]),
    ):
        wait_for_port(port, timeout=30)
        time.sleep(1.0)  # both bound
        send_at_once(port, files, 16)
    assert recorded(db) == len(files)
    assert len(list((tmp_path / "storage").rglob("*.dcm"))) == len(files)
    served = [log.read_text().count("Accepting Association") for log in logs]
    assert sum(served) == 16
    assert all(n > 0 for n in served), f"associations per process: {served}"


def children_of(pid: int) -> set[int]:
    return {int(n) for n in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_scp_processes_option_runs_supervised_processes_on_one_port(
    db: Db, tmp_path: Path, corpus: Corpus
) -> None:
    port = free_port()
    log = tmp_path / "scp.log"
    files = [i.path for i in corpus.instances]
    with scp_process(db, tmp_path / "storage", port, log, "--processes", "2") as scp:
        wait_for(lambda: len(children_of(scp.pid)) == 2, 60, "two SCP processes")
        first = children_of(scp.pid)
        wait_for_port(port, timeout=30)
        time.sleep(1.0)  # both bound
        send_at_once(port, files, 8)
        assert recorded(db) == len(files)
        # Each child logs with its pid; both took associations.
        served = {pid: log.read_text().count(f"[{pid}]") for pid in first}
        assert all(served.values()), f"log lines per SCP process: {served}"

        # One dies: it is started again, and the port keeps answering meanwhile.
        killed = min(first)
        os.kill(killed, signal.SIGKILL)
        wait_for(
            lambda: len(children_of(scp.pid)) == 2 and killed not in children_of(scp.pid),
            30,
            "the killed SCP process to be replaced",
        )
        again = sender(port, files[:5])
        output, _ = again.communicate(timeout=120)
        assert again.returncode == 0, output.decode()

        survivors = children_of(scp.pid)
        scp.send_signal(signal.SIGTERM)
        assert scp.wait(60) == 0, log.read_text()
    assert not any(Path(f"/proc/{pid}").exists() for pid in survivors)
    assert recorded(db) == len(files)
    assert len(list((tmp_path / "storage").rglob("*.dcm"))) == len(files)
