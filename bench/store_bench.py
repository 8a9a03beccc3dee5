"""C-STORE ingest benchmark: qrfarm scp against DCMTK storescp, bare pynetdicom and Orthanc.

The same synthetic instances are sent with DCMTK's storescu into each
receiver, each a fresh process with empty storage for every measurement:

- ``storescp``: DCMTK /usr/bin/storescp --fork, writing files (no fsync);
- ``pynetdicom``: bench/bare_scp.py, writing the received bytes (no fsync);
- ``orthanc``: /usr/sbin/Orthanc, own configuration, its defaults otherwise
  (SyncStorageArea true: fsync per file, SQLite index);
- ``qrfarm``: ``qrfarm scp`` on PostgreSQL, scp_fsync true (durable file and
  committed row before each answer), on pynetdicom's receive path;
- ``qrfarm-asyncio``: the same on its asyncio receive path
  (``scp_receive_path = "asyncio"``).

Each is measured with one association (one storescu) and four at once (four
storescu processes, a quarter of the files each), with the tools as packaged
(Nagle on) and with TCP_NODELAY=1 in the environment of storescu and of the
DCMTK/Orthanc receivers. The time runs from starting the sender(s) to the
last one exiting; the receiver is then checked to hold every instance.

    .venv/bin/python bench/store_bench.py [--ct 400] [--tiny 1000] [--quick]
        [--repeat 1] [--json results.json]

Needs DCMTK and Orthanc from Debian, and PostgreSQL on 127.0.0.1:5432 (user
postgres, trust auth); the database ``qrfarm_bench`` is dropped and created
afresh for every qrfarm measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import pydicom
import pynetdicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

LOCALHOST = "127.0.0.1"
STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
ORTHANC = "/usr/sbin/Orthanc"
CALLING_AE = "BENCHSCU"
BENCH_DIR = Path(__file__).resolve().parent
BARE_SCP = BENCH_DIR / "bare_scp.py"
QRFARM_TIMED = BENCH_DIR / "qrfarm_timed.py"

PG_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
BENCH_DB = "qrfarm_bench"
BENCH_DB_URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{BENCH_DB}"

UID_ROOT = "1.2.826.0.1.3680043.10.1234.77."  # under the project's synthetic root
SERIES_SIZE = 100

RECEIVERS = ("storescp", "pynetdicom", "orthanc", "qrfarm", "qrfarm-asyncio")
# Not run by default: the bare SCP re-arming TCP_QUICKACK (what as-packaged senders need).
EXTRA_RECEIVERS = ("pynetdicom-quickack",)
DATASETS = ("ct", "tiny")
MODES = ("packaged", "nodelay")
ASSOCIATIONS = (1, 4)
SENDER_TIMEOUT_S = 900.0


class BenchError(RuntimeError):
    """Something the benchmark needs is missing or did not start."""


# --- data ---------------------------------------------------------------------


@dataclass(frozen=True)
class DataSet:
    name: str
    files: list[Path]
    total_bytes: int

    @property
    def mean_bytes(self) -> float:
        return self.total_bytes / len(self.files) if self.files else 0.0


def _pattern(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    row = bytes(rng.randrange(256) for _ in range(min(size, 4096)))
    return (row * (size // len(row) + 1))[:size]


def generate(folder: Path, name: str, count: int, side: int, set_no: int) -> DataSet:
    """``count`` CT images of ``side`` x ``side`` 16-bit pixels, Explicit VR Little Endian."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = bytearray(_pattern(side * side * 2, set_no))
    study_uid = f"{UID_ROOT}{set_no}"
    files: list[Path] = []
    total = 0
    for n in range(count):
        series_no = n // SERIES_SIZE + 1
        sop_uid = f"{study_uid}.{series_no}.{n + 1}"
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = UID(f"{UID_ROOT}0.1")
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = "20261124"
        ds.StudyTime = "120000"
        ds.AccessionNumber = f"BENCH{set_no}"
        ds.Modality = "CT"
        ds.Manufacturer = "qrfarm bench"
        ds.PatientName = f"BENCH^{name.upper()}"
        ds.PatientID = f"BENCH-{name.upper()}"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = f"{study_uid}.{series_no}"
        ds.StudyID = str(set_no)
        ds.SeriesNumber = series_no
        ds.InstanceNumber = n + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(n)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.FrameOfReferenceUID = f"{study_uid}.0"
        ds.SliceThickness = 1.0
        ds.PixelSpacing = [0.7, 0.7]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = side
        ds.Columns = side
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        pixels[0:4] = n.to_bytes(4, "little")  # no two images alike
        ds.PixelData = bytes(pixels)
        path = folder / f"{n:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        total += path.stat().st_size
    return DataSet(name, files, total)


# --- processes and ports --------------------------------------------------------


def free_port() -> int:
    """A port below the ephemeral range that nothing listens on."""
    try:
        low_eph = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low_eph = 32768
    for _ in range(500):
        port = random.randint(15000, low_eph - 1)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((LOCALHOST, port))
            except OSError:
                continue
            return port
    raise BenchError("no free TCP port found")


def listening_ports() -> set[int]:
    """Local TCP ports in state LISTEN (IPv4 and IPv6), from /proc/net."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int, *, with_children: bool = False) -> float:
    """CPU seconds (user + system) a process has used; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if with_children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime (reaped children)
    return ticks / _TICK


def session_cpu(leader: int) -> float:
    """CPU seconds of a session: its leader with reaped children, and the rest alive."""
    total = process_cpu(leader, with_children=True)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == leader:
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == leader:  # session id
            total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def mode_env(mode: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a DCMTK tool or Orthanc: TCP_NODELAY=1 only in nodelay mode."""
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if mode == "nodelay":
        env["TCP_NODELAY"] = "1"
    env.update(extra or {})
    return env


class Child:
    """A process in its own session, logging to a file; stop() ends its group."""

    def __init__(
        self, name: str, argv: Sequence[str], *, cwd: Path, log: Path, env: Mapping[str, str]
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log
        self._log: IO[bytes] = log.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
        )

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(log unreadable: {exc})"

    def wait_listening(self, port: int, timeout: float = 60.0) -> None:
        """Wait until something listens on ``port``, without connecting to it.

        A probing connection would be taken for an association that never
        sends its A-ASSOCIATE-RQ: a pynetdicom server then keeps a thread
        waiting for it for the ACSE timeout (30 s), and qrfarm scp's drain on
        SIGTERM waits for that thread.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.running():
            if port in listening_ports():
                return
            time.sleep(0.05)
        state = "running" if self.running() else f"exited with {self.popen.returncode}"
        raise BenchError(f"{self.name} not listening on port {port} ({state})\n{self.log_tail()}")

    def stop(self, timeout: float = 40.0) -> None:
        if self.running():
            self._signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.popen.wait(timeout)
        self._signal(signal.SIGKILL)  # forked children (storescp --fork)
        self._log.close()

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)


# --- receivers --------------------------------------------------------------------


class Running(Protocol):
    ae_title: str
    port: int
    process: Child

    def count(self) -> dict[str, int]: ...

    def cpu_seconds(self) -> float: ...

    def stop(self) -> None: ...


@dataclass
class FileReceiver:
    """storescp or the bare pynetdicom SCP: count the .dcm files they wrote."""

    ae_title: str
    port: int
    process: Child
    folder: Path

    def count(self) -> dict[str, int]:
        return {"files": sum(1 for _ in self.folder.rglob("*.dcm"))}

    def cpu_seconds(self) -> float:
        return session_cpu(self.process.popen.pid)

    def stop(self) -> None:
        self.process.stop()


def start_storescp(workdir: Path, mode: str) -> FileReceiver:
    out = workdir / "received"
    out.mkdir()
    port = free_port()
    argv = [STORESCP, "--fork", "-aet", "STORESCP", "-od", str(out), "-fe", ".dcm", str(port)]
    child = Child("storescp", argv, cwd=workdir, log=workdir / "storescp.log", env=mode_env(mode))
    child.wait_listening(port)
    return FileReceiver("STORESCP", port, child, out)


def start_bare(workdir: Path, mode: str, *, quickack: bool = False) -> FileReceiver:
    out = workdir / "received"
    port = free_port()
    argv = [sys.executable, str(BARE_SCP), "--port", str(port), "--out", str(out)]
    if mode == "nodelay":
        argv.append("--nodelay")
    if quickack:
        argv.append("--quickack")
    child = Child(
        "bare pynetdicom SCP", argv, cwd=workdir, log=workdir / "bare.log", env=os.environ
    )
    child.wait_listening(port)
    return FileReceiver("BARESCP", port, child, out)


@dataclass
class OrthancReceiver:
    ae_title: str
    port: int
    process: Child
    http_port: int
    storage: Path

    def rest_json(self, path: str) -> Any:
        connection = http.client.HTTPConnection(LOCALHOST, self.http_port, timeout=30)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            if response.status >= 400:
                raise BenchError(f"Orthanc GET {path}: HTTP {response.status}")
            return json.loads(body)
        finally:
            connection.close()

    def count(self) -> dict[str, int]:
        files = sum(1 for p in self.storage.rglob("*") if p.is_file() and p.suffix != ".json")
        instances = int(self.rest_json("/statistics")["CountInstances"])
        return {"instances": instances, "files": files}

    def cpu_seconds(self) -> float:
        return session_cpu(self.process.popen.pid)

    def stop(self) -> None:
        self.process.stop()


def start_orthanc(workdir: Path, mode: str) -> OrthancReceiver:
    port, http_port = free_port(), free_port()
    config = {
        "Name": "qrfarm-bench",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "Plugins": [],
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAet": "ORTHANC",
        "DicomPort": port,
    }
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    child = Child(
        "Orthanc",
        [ORTHANC, str(config_path)],
        cwd=workdir,
        log=workdir / "orthanc.log",
        env=mode_env(mode),
    )
    receiver = OrthancReceiver("ORTHANC", port, child, http_port, workdir / "storage")
    try:
        child.wait_listening(port)
        child.wait_listening(http_port)
        receiver.rest_json("/system")
    except BaseException:
        child.stop()
        raise
    return receiver


def _pg_admin(*statements: str) -> None:
    import psycopg  # the project's dependency; imported here so --help works without it

    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as connection:
        for statement in statements:
            connection.execute(statement.encode())


def _pg_backends() -> list[int]:
    """PostgreSQL backend pids connected to the bench database (this machine's server)."""
    import psycopg

    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as connection:
        rows = connection.execute(
            b"SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (BENCH_DB,),
        ).fetchall()
    return [int(r[0]) for r in rows]


def _pg_count() -> dict[str, int]:
    import psycopg

    dsn = PG_ADMIN_DSN.replace("dbname=postgres", f"dbname={BENCH_DB}")
    with psycopg.connect(dsn) as connection:
        counts: dict[str, int] = {}
        for table, query in (
            ("orphan_instances", b"SELECT count(*) FROM orphan_instances"),
            ("received_instances", b"SELECT count(*) FROM received_instances"),
        ):
            row = connection.execute(query).fetchone()
            counts[table] = int(row[0]) if row else 0
        return counts


@dataclass
class QrfarmReceiver:
    ae_title: str
    port: int
    process: Child
    storage_root: Path
    profiler: Child | None = None

    def count(self) -> dict[str, int]:
        rows = _pg_count()
        files = sum(1 for _ in self.storage_root.rglob("*.dcm"))
        return {"rows": rows["orphan_instances"] + rows["received_instances"], "files": files}

    def cpu_seconds(self) -> float:
        """The SCP processes (with --processes, a parent and its children) and the
        PostgreSQL backends serving them."""
        return session_cpu(self.process.popen.pid) + sum(process_cpu(p) for p in _pg_backends())

    def stop(self) -> None:
        self.process.stop()
        if self.profiler is not None:  # py-spy writes its profile once the target exits
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.profiler.popen.wait(60)
            self.profiler.stop()


def qrfarm_config(
    workdir: Path, port: int, processes: int = 1, receive_path: str = "pynetdicom"
) -> Path:
    text = f"""\
database_url = "{BENCH_DB_URL}"
scp_receive_path = "{receive_path}"
storage_root = "{workdir / "storage"}"
scp_host = "{LOCALHOST}"
scp_port = {port}
scp_ae_title = "QRFARMSCP"
scp_fsync = true
scp_processes = {processes}

[nodes.bench]
ae_title = "{CALLING_AE}"
host = "{LOCALHOST}"
port = 104
store_ae_titles = ["{CALLING_AE}"]
"""
    path = workdir / "qrfarm.toml"
    path.write_text(text)
    return path


@dataclass(frozen=True)
class QrfarmOptions:
    """How qrfarm scp runs: its processes, and optional looks inside (both slow it down)."""

    processes: int = 1  # qrfarm scp --processes (scp_processes)
    profile_dir: Path | None = None  # py-spy profiles
    timings_dir: Path | None = None  # per-step handler timings (bench/qrfarm_timed.py)

    def path(self, folder: Path | None, data: str, associations: int, mode: str) -> Path | None:
        if folder is None:
            return None
        return folder / f"qrfarm-{data}-{associations}a-{mode}"


def start_qrfarm(
    workdir: Path,
    mode: str,
    *,
    profile_to: Path | None = None,
    timings_to: Path | None = None,
    processes: int = 1,
    receive_path: str = "pynetdicom",
) -> QrfarmReceiver:
    del mode  # qrfarm sets TCP_NODELAY on its sockets itself, whatever the environment
    _pg_admin(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)", f"CREATE DATABASE {BENCH_DB}")
    port = free_port()
    # One process under the profiler or the step timers: they follow one pid.
    diagnosed = profile_to is not None or timings_to is not None
    config = qrfarm_config(workdir, port, 1 if diagnosed else processes, receive_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("QRFARM_")}
    env["QRFARM_CONFIG"] = str(config)
    cli = [sys.executable, "-m", "qrfarm.cli"]
    upgrade = subprocess.run(
        [*cli, "db", "upgrade"], cwd=workdir, env=env, capture_output=True, text=True, check=False
    )
    if upgrade.returncode != 0:
        raise BenchError(f"qrfarm db upgrade failed:\n{upgrade.stdout}{upgrade.stderr}")
    argv = [*cli, "scp"]
    if timings_to is not None:
        argv = [sys.executable, str(QRFARM_TIMED)]
        env["QRFARM_BENCH_TIMINGS"] = str(timings_to)
    child = Child("qrfarm scp", argv, cwd=workdir, log=workdir / "qrfarm.log", env=env)
    try:
        child.wait_listening(port)
    except BaseException:
        child.stop()
        raise
    profiler = None
    if profile_to is not None:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        profiler = Child(
            "py-spy",
            [
                *(py_spy, "record", "--pid", str(child.popen.pid), "--format", "raw"),
                *(
                    "--threads",
                    "--rate",
                    "200",
                    *(("--gil",) if os.environ.get("QRFARM_BENCH_PROFILE_GIL") else ()),
                    "-o",
                    str(profile_to),
                ),
            ],
            cwd=workdir,
            log=workdir / "py-spy.log",
            env=os.environ,
        )
        time.sleep(1.0)  # let it attach
    return QrfarmReceiver("QRFARMSCP", port, child, workdir / "storage", profiler)


# --- measuring --------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    counts: dict[str, int]
    receiver_cpu_s: float
    sender_cpu_s: float
    problems: list[str] = field(default_factory=list)  # the run failed
    notes: list[str] = field(default_factory=list)  # worth a look, not a failure
    timings: dict[str, Any] | None = None  # per-step handler timings (--qrfarm-timings)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Measurement:
    receiver: str
    dataset: str
    associations: int
    mode: str
    instances: int
    total_bytes: int
    runs: list[Run] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.runs)

    @property
    def inst_per_s(self) -> float:
        return self.instances / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.total_bytes / 1e6 / self.seconds

    @property
    def receiver_cpu_ms(self) -> float:
        """Receiver CPU per instance, ms (median over the runs)."""
        return statistics.median(r.receiver_cpu_s for r in self.runs) * 1000 / self.instances

    @property
    def sender_cpu_ms(self) -> float:
        return statistics.median(r.sender_cpu_s for r in self.runs) * 1000 / self.instances


def split(files: Sequence[Path], parts: int) -> list[list[Path]]:
    size = -(-len(files) // parts)
    return [list(files[i : i + size]) for i in range(0, len(files), size)]


def send(
    receiver: Running, files: Sequence[Path], associations: int, mode: str, logs: Path
) -> tuple[float, list[str]]:
    """Run the storescu processes; (seconds from first start to last exit, problems)."""
    env = mode_env(mode)
    procs: list[tuple[subprocess.Popen[bytes], Path, IO[bytes]]] = []
    started = time.perf_counter()
    for n, chunk in enumerate(split(files, associations)):
        log_path = logs / f"storescu-{n}.log"
        log: IO[bytes] = log_path.open("wb")
        argv = [STORESCU, "-aet", CALLING_AE, "-aec", receiver.ae_title, LOCALHOST]
        argv += [str(receiver.port), *(str(p) for p in chunk)]
        procs.append(
            (
                subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
                ),
                log_path,
                log,
            )
        )
    problems: list[str] = []
    deadline = started + SENDER_TIMEOUT_S
    for proc, log_path, _log in procs:
        try:
            proc.wait(max(1.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            problems.append(f"{log_path.name}: killed after {SENDER_TIMEOUT_S:.0f} s")
    elapsed = time.perf_counter() - started
    for proc, log_path, log in procs:
        log.close()
        if proc.returncode != 0:
            problems.append(f"{log_path.name}: storescu exited with {proc.returncode}")
        errors = [
            line
            for line in log_path.read_text(errors="replace").splitlines()
            if line.startswith(("E:", "F:"))
        ]
        if errors:
            problems.append(f"{log_path.name}: {len(errors)} error lines, first: {errors[0]}")
    return elapsed, problems


def start_receiver(
    name: str,
    workdir: Path,
    mode: str,
    *,
    profile_to: Path | None = None,
    timings_to: Path | None = None,
    qrfarm_processes: int = 1,
) -> Running:
    if name == "storescp":
        return start_storescp(workdir, mode)
    if name == "pynetdicom":
        return start_bare(workdir, mode)
    if name == "pynetdicom-quickack":
        return start_bare(workdir, mode, quickack=True)
    if name == "orthanc":
        return start_orthanc(workdir, mode)
    if name == "qrfarm":
        return start_qrfarm(
            workdir, mode, profile_to=profile_to, timings_to=timings_to, processes=qrfarm_processes
        )
    if name == "qrfarm-asyncio":
        return start_qrfarm(
            workdir,
            mode,
            profile_to=profile_to,
            timings_to=timings_to,
            processes=qrfarm_processes,
            receive_path="asyncio",
        )
    raise BenchError(f"unknown receiver {name}")


def measure_once(
    name: str,
    data: DataSet,
    associations: int,
    mode: str,
    scratch: Path,
    *,
    keep: bool,
    qrfarm_options: QrfarmOptions,
) -> Run:
    workdir = Path(
        tempfile.mkdtemp(prefix=f"{name}-{data.name}-{associations}-{mode}-", dir=scratch)
    )
    profile_to = timings_to = None
    if name.startswith("qrfarm"):
        key = (data.name, associations, mode)
        profile_to = qrfarm_options.path(qrfarm_options.profile_dir, *key)
        timings_to = qrfarm_options.path(qrfarm_options.timings_dir, *key)
    if profile_to is not None:
        profile_to = profile_to.with_suffix(".txt")
    if timings_to is not None:
        timings_to = timings_to.with_suffix(".json")
    receiver = start_receiver(
        name,
        workdir,
        mode,
        profile_to=profile_to,
        timings_to=timings_to,
        qrfarm_processes=qrfarm_options.processes,
    )
    try:
        cpu_before = receiver.cpu_seconds()
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds, problems = send(receiver, data.files, associations, mode, workdir)
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        receiver_cpu = receiver.cpu_seconds() - cpu_before
        sender_cpu = (children_after.ru_utime + children_after.ru_stime) - (
            children_before.ru_utime + children_before.ru_stime
        )
        counts = receiver.count()
        if not receiver.process.running():
            problems.append(f"receiver exited with {receiver.process.popen.returncode}")
    finally:
        receiver.stop()
    for what, value in counts.items():
        if value != len(data.files):
            problems.append(f"receiver holds {value} {what}, expected {len(data.files)}")
    run = Run(
        seconds, counts, receiver_cpu, sender_cpu, problems, receiver_log_notes(receiver.process)
    )
    if timings_to is not None:
        try:
            run.timings = json.loads(timings_to.read_text())
        except (OSError, ValueError) as exc:
            run.notes.append(f"no handler timings from qrfarm scp: {exc}")
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return run


def format_timings(timings: dict[str, Any]) -> str:
    lines = []
    for step, t in timings.get("steps", {}).items():
        lines.append(
            f"      {step:<34} n={t['n']:<5} mean {t['mean_ms']:7.3f} ms  "
            f"median {t['median_ms']:7.3f}  p90 {t['p90_ms']:7.3f}  total {t['total_s']:6.2f} s"
        )
    if timings.get("missing"):
        lines.append(f"      (not found, not timed: {', '.join(timings['missing'])})")
    return "\n".join(lines)


def receiver_log_notes(process: Child) -> list[str]:
    try:
        lines = process.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    bad = [
        line
        for line in lines
        if "Traceback" in line or " ERROR " in line or line.startswith(("E:", "F:"))
    ]
    if not bad:
        return []
    return [f"{process.name} log: {len(bad)} error lines, first: {bad[0][:300]}"]


# --- report -------------------------------------------------------------------------


def find(
    results: Sequence[Measurement], receiver: str, dataset: str, associations: int, mode: str
) -> Measurement | None:
    for m in results:
        if (m.receiver, m.dataset, m.associations, m.mode) == (
            receiver,
            dataset,
            associations,
            mode,
        ):
            return m
    return None


def ratio(
    results: Sequence[Measurement],
    a: tuple[str, str, int, str],
    b: tuple[str, str, int, str],
) -> float | None:
    ma, mb = find(results, *a), find(results, *b)
    if ma is None or mb is None or not ma.runs or not mb.runs:
        return None
    return ma.inst_per_s / mb.inst_per_s


def ratios(results: Sequence[Measurement]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for ds in DATASETS:
        out[f"a.{ds}.qrfarm/pynetdicom (1 assoc, nodelay)"] = ratio(
            results, ("qrfarm", ds, 1, "nodelay"), ("pynetdicom", ds, 1, "nodelay")
        )
        out[f"a.{ds}.qrfarm/orthanc (1 assoc, nodelay)"] = ratio(
            results, ("qrfarm", ds, 1, "nodelay"), ("orthanc", ds, 1, "nodelay")
        )
    for ds in DATASETS:
        for mode in MODES:
            out[f"b.{ds}.qrfarm 4 assoc/1 assoc ({mode})"] = ratio(
                results, ("qrfarm", ds, 4, mode), ("qrfarm", ds, 1, mode)
            )
    for ds in DATASETS:
        for n in ASSOCIATIONS:
            for other in ("storescp", "orthanc"):
                out[f"c.{ds}.qrfarm/{other} ({n} assoc, packaged)"] = ratio(
                    results, ("qrfarm", ds, n, "packaged"), (other, ds, n, "packaged")
                )
    # The asyncio receive path against pynetdicom's, and against the marks.
    for ds in DATASETS:
        for n in ASSOCIATIONS:
            for mode in MODES:
                out[f"d.{ds}.qrfarm-asyncio/qrfarm ({n} assoc, {mode})"] = ratio(
                    results, ("qrfarm-asyncio", ds, n, mode), ("qrfarm", ds, n, mode)
                )
        for other in ("pynetdicom", "orthanc"):
            out[f"d.{ds}.qrfarm-asyncio/{other} (1 assoc, nodelay)"] = ratio(
                results, ("qrfarm-asyncio", ds, 1, "nodelay"), (other, ds, 1, "nodelay")
            )
        out[f"d.{ds}.qrfarm-asyncio 4 assoc/1 assoc (nodelay)"] = ratio(
            results, ("qrfarm-asyncio", ds, 4, "nodelay"), ("qrfarm-asyncio", ds, 1, "nodelay")
        )
    return {k: v for k, v in out.items() if v is not None}


def table(results: Sequence[Measurement]) -> str:
    header = (
        f"{'receiver':<19} {'data':<5} {'assoc':>5} {'sender':<9} "
        f"{'inst/s':>9} {'MB/s':>8} {'seconds':>8} {'rx CPU':>7} {'tx CPU':>7}  check"
    )
    lines = [header, "-" * len(header)]
    # rx/tx CPU: ms of CPU per instance in the receiver (for qrfarm with its
    # PostgreSQL backends) and in the storescu senders.
    for m in results:
        if not m.runs:
            continue
        check = "ok" if m.ok else "FAILED"
        lines.append(
            f"{m.receiver:<19} {m.dataset:<5} {m.associations:>5} {m.mode:<9} "
            f"{m.inst_per_s:>9,.1f} {m.mb_per_s:>8,.1f} {m.seconds:>8.2f} "
            f"{m.receiver_cpu_ms:>7.2f} {m.sender_cpu_ms:>7.2f}  {check}"
        )
    return "\n".join(lines)


def qrfarm_revision() -> str:
    """The commit of the qrfarm sources the receiver ran, "+dirty" if qrfarm/ had changes."""
    try:
        import qrfarm
    except ImportError:
        return "?"
    source = Path(qrfarm.__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return head + ("+dirty" if dirty else "")


def versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        text = (result.stdout or result.stderr).strip().splitlines()
        return text[0] if text else "?"

    return {
        "qrfarm": qrfarm_revision(),
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "pynetdicom": pynetdicom.__version__,
        "storescu": first_line([STORESCU, "--version"]),
        "orthanc": first_line([ORTHANC, "--version"]),
        "cpus": str(os.cpu_count()),
    }


# --- main ---------------------------------------------------------------------------


def report_run(receiver: str, d: DataSet, n: int, mode: str, run: Run) -> None:
    flag = "ok" if run.ok else "FAILED"
    print(
        f"  {receiver:<19} {d.name:<4} {n} assoc {mode:<8} "
        f"{run.seconds:7.2f} s  {len(d.files) / run.seconds:8.1f} inst/s"
        f"  rx CPU {run.receiver_cpu_s:5.2f} s  {flag} {run.counts}",
        flush=True,
    )
    for problem in run.problems:
        print(f"      !! {problem}", flush=True)
    for note in run.notes:
        print(f"      .. {note}", flush=True)
    if run.timings is not None:
        print(format_timings(run.timings), flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="C-STORE ingest: qrfarm scp against storescp, bare pynetdicom, Orthanc."
    )
    parser.add_argument("--ct", type=int, default=None, help="CT images 512x512 (default 400)")
    parser.add_argument("--tiny", type=int, default=None, help="tiny 64x64 images (default 1000)")
    parser.add_argument("--quick", action="store_true", help="40 CT and 100 tiny (smoke test)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per measurement, 1 to 5; the table shows medians",
    )
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument(
        "--receivers",
        default=",".join(RECEIVERS),
        help=f"any of {','.join(RECEIVERS + EXTRA_RECEIVERS)} (default: the first four)",
    )
    parser.add_argument("--datasets", default=",".join(DATASETS), help="subset of ct,tiny")
    parser.add_argument("--modes", default=",".join(MODES), help="subset of packaged,nodelay")
    parser.add_argument("--associations", default="1,4", help="subset of 1,4")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep received files and logs")
    parser.add_argument(
        "--qrfarm-processes",
        type=int,
        default=os.cpu_count() or 1,
        help="qrfarm scp --processes (default: one per core)",
    )
    parser.add_argument(
        "--qrfarm-timings",
        type=Path,
        help="run qrfarm scp through bench/qrfarm_timed.py and keep per-step timings of its "
        "C-STORE handler (JSON per measurement) in this folder",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="record a py-spy profile of qrfarm scp per measurement into this folder "
        "(slows it down: for finding where the time goes, not for the numbers)",
    )
    args = parser.parse_args(argv)
    args.ct = args.ct if args.ct is not None else (40 if args.quick else 400)
    args.tiny = args.tiny if args.tiny is not None else (100 if args.quick else 1000)
    if not 1 <= args.repeat <= 5:
        parser.error("--repeat: 1 to 5")
    return args


def check_tools(receivers: Sequence[str]) -> None:
    needed = [STORESCU]
    if "storescp" in receivers:
        needed.append(STORESCP)
    if "orthanc" in receivers:
        needed.append(ORTHANC)
    missing = [p for p in needed if not os.access(p, os.X_OK)]
    if missing:
        raise BenchError(f"missing: {', '.join(missing)} (DCMTK and Orthanc from Debian)")


@contextlib.contextmanager
def scratch_dir(given: Path | None, keep: bool) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    path = Path(tempfile.mkdtemp(prefix="qrfarm-store-bench-"))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    receivers = [r for r in args.receivers.split(",") if r]
    datasets = [d for d in args.datasets.split(",") if d]
    modes = [m for m in args.modes.split(",") if m]
    assocs = [int(a) for a in args.associations.split(",") if a]
    for chosen, allowed in (
        (receivers, RECEIVERS + EXTRA_RECEIVERS),
        (datasets, DATASETS),
        (modes, MODES),
    ):
        unknown = set(chosen) - set(allowed)
        if unknown:
            raise BenchError(f"unknown: {', '.join(sorted(unknown))}")
    check_tools(receivers)
    for folder in (args.profile, args.qrfarm_timings):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    qrfarm_options = QrfarmOptions(args.qrfarm_processes, args.profile, args.qrfarm_timings)
    began = time.monotonic()
    at_start = versions()
    print("versions: " + ", ".join(f"{k} {v}" for k, v in at_start.items()))
    print(f"qrfarm scp --processes {qrfarm_options.processes}")
    with scratch_dir(args.workdir, args.keep) as scratch:
        sets: dict[str, DataSet] = {}
        # name, count, image side, set number (the study UID's last component)
        for name, count, side, set_no in (("ct", args.ct, 512, 1), ("tiny", args.tiny, 64, 2)):
            if name not in datasets or count <= 0:
                continue
            t0 = time.monotonic()
            d = generate(scratch / "data" / name, name, count, side, set_no)
            sets[name] = d
            print(
                f"data set {d.name}: {len(d.files)} instances, {d.total_bytes / 1e6:.1f} MB, "
                f"{d.mean_bytes:,.0f} bytes each (generated in {time.monotonic() - t0:.1f} s)"
            )
        results: list[Measurement] = []
        # Receivers measured back to back for each case (and round by round when
        # repeated): a ratio compares runs minutes apart at most, not a whole
        # bench apart, on a machine whose speed drifts.
        for d in sets.values():
            for mode in modes:
                for n in assocs:
                    case = {
                        r: Measurement(r, d.name, n, mode, len(d.files), d.total_bytes)
                        for r in receivers
                    }
                    for _ in range(args.repeat):
                        for receiver, m in case.items():
                            run = measure_once(
                                receiver,
                                d,
                                n,
                                mode,
                                scratch,
                                keep=args.keep,
                                qrfarm_options=qrfarm_options,
                            )
                            m.runs.append(run)
                            report_run(receiver, d, n, mode, run)
                    results.extend(case.values())
    elapsed = time.monotonic() - began
    print()
    print(table(results))
    print()
    computed = ratios(results)
    print("ratios (instances/s over instances/s, medians):")
    for key, value in computed.items():
        print(f"  {key:<48} {value:6.2f}")
    failed = [m for m in results if not m.ok]
    print(f"\ntotal time {elapsed:.0f} s")
    if args.json is not None:
        payload = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "argv": sys.argv,
            "versions": at_start,
            "qrfarm_at_end": qrfarm_revision(),
            "repeat": args.repeat,
            "datasets": {
                d.name: {"instances": len(d.files), "bytes": d.total_bytes} for d in sets.values()
            },
            "results": [
                {
                    **{k: v for k, v in asdict(m).items() if k != "runs"},
                    "seconds_median": m.seconds,
                    "instances_per_s": m.inst_per_s,
                    "mb_per_s": m.mb_per_s,
                    "receiver_cpu_ms_per_instance": m.receiver_cpu_ms,
                    "sender_cpu_ms_per_instance": m.sender_cpu_ms,
                    "ok": m.ok,
                    "runs": [{**asdict(r), "ok": r.ok} for r in m.runs],
                }
                for m in results
                if m.runs
            ],
            "ratios": computed,
            "elapsed_s": elapsed,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"results written to {args.json}")
    if failed:
        print("\n" + "!" * 72, file=sys.stderr)
        for m in failed:
            for r in m.runs:
                for problem in r.problems:
                    print(
                        f"FAILURE {m.receiver} {m.dataset} {m.associations} assoc {m.mode}: "
                        f"{problem}",
                        file=sys.stderr,
                    )
        print("!" * 72, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"store_bench: {exc}", file=sys.stderr)
        sys.exit(2)
