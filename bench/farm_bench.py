"""Move and find through the qrfarm farm, against DCMTK and bare pynetdicom.

One Orthanc (TCP_NODELAY=1) holds one study of 200 CT images 512x512 16-bit.
The farm runs as processes on PostgreSQL (database ``qrfarm_farmbench``,
created and dropped here) and Redis DB 11 (flushed before and after):
``qrfarm scp``, ``qrfarm worker --node orthanc --concurrency 2`` and
``qrfarm scheduler``.

1. move, STUDY level, median of ``--repeat`` runs:
   - qrfarm: ``Client.move`` submitted until the job is ``completed``;
   - DCMTK movescu -> storescp, as packaged and with TCP_NODELAY=1;
   - movescu -> bench/bare_scp.py (bare pynetdicom, TCP_NODELAY on).
2. find, STUDY level, study root:
   - ``--finds`` finds through the farm (submit all, wait all) against as many
     sequential ``findscu`` runs (TCP_NODELAY=1);
   - one find at a time, submit until the answers are stored, against a raw
     C-FIND on a held pynetdicom association (``qrfarm.dicom.Connection``).

    .venv/bin/python bench/farm_bench.py [--images 200] [--repeat 3] [--finds 100]
        [--json results.json] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from store_bench import (
    LOCALHOST,
    ORTHANC,
    PG_ADMIN_DSN,
    STORESCP,
    STORESCU,
    BenchError,
    Child,
    FileReceiver,
    OrthancReceiver,
    free_port,
    generate,
    mode_env,
    start_bare,
    start_storescp,
    versions,
)

MOVESCU = "/usr/bin/movescu"
FINDSCU = "/usr/bin/findscu"
CALLING_AE = "BENCHSCU"
FARM_DB = "qrfarm_farmbench"
FARM_DB_URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{FARM_DB}"
FARM_DB_DSN = f"postgresql://postgres@127.0.0.1:5432/{FARM_DB}"
FARM_BROKER = "redis://127.0.0.1:6379/11"
FARM_SCP_AE = "QRFARMSCP"
FARM_AE = "QRFARM"
NODE = "orthanc"
SET_NO = 1  # study UID: store_bench.UID_ROOT + "1"
PATIENT_ID = "BENCH-CT"


# --- services ---------------------------------------------------------------------


def start_orthanc(
    workdir: Path, destinations: dict[str, int], mode: str = "nodelay"
) -> OrthancReceiver:
    """Orthanc (TCP_NODELAY=1 unless ``mode`` is "packaged"), knowing the move
    destinations and the callers."""
    port, http_port = free_port(), free_port()
    modalities: dict[str, list[Any]] = {ae: [ae, LOCALHOST, p] for ae, p in destinations.items()}
    for caller in (FARM_AE, CALLING_AE):
        modalities.setdefault(caller, [caller, LOCALHOST, 104])
    config = {
        "Name": "qrfarm-farm-bench",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "Plugins": [],
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAet": "ORTHANC",
        "DicomPort": port,
        "DicomModalities": modalities,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowMove": True,
        "DicomAlwaysAllowStore": True,
    }
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    child = Child(
        "Orthanc",
        [ORTHANC, str(config_path)],
        cwd=workdir,
        log=workdir / "orthanc.log",
        env=mode_env(mode),
    )
    orthanc = OrthancReceiver("ORTHANC", port, child, http_port, workdir / "storage")
    try:
        child.wait_listening(port)
        child.wait_listening(http_port)
        orthanc.rest_json("/system")
    except BaseException:
        child.stop()
        raise
    return orthanc


def load_orthanc(orthanc: OrthancReceiver, folder: Path, count: int) -> None:
    argv = [STORESCU, "-aet", CALLING_AE, "-aec", "ORTHANC", "+sd", LOCALHOST]
    argv += [str(orthanc.port), str(folder)]
    subprocess.run(
        argv,
        env=mode_env("nodelay"),
        check=True,
        capture_output=True,
        timeout=600,
    )
    held = int(orthanc.rest_json("/statistics")["CountInstances"])
    if held != count:
        raise BenchError(f"Orthanc holds {held} instances, expected {count}")


def pg_admin(*statements: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as connection:
        for statement in statements:
            connection.execute(statement.encode())


def flush_redis() -> None:
    import redis

    client = redis.Redis.from_url(FARM_BROKER)
    try:
        client.flushdb()
    finally:
        client.close()


class Farm:
    """qrfarm scp, one worker and the scheduler as processes, with their environment."""

    def __init__(
        self, root: Path, orthanc_port: int, scp_port: int, receive_path: str | None = None
    ) -> None:
        self.root = root
        self.scp_port = scp_port
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("QRFARM_")},
            "QRFARM_DATABASE_URL": FARM_DB_URL,
            "QRFARM_BROKER_URL": FARM_BROKER,
            "QRFARM_STORAGE_ROOT": str(root / "storage"),
            "QRFARM_DATA_DIR": str(root / "data"),
            "QRFARM_SCP_PORT": str(scp_port),
            "QRFARM_ALLOWED_HOSTS": LOCALHOST,
            "QRFARM_CONFIG": str(root / "none.toml"),
            "QRFARM_RECONCILE_GRACE_S": "10",
        }
        if receive_path is not None:
            self.env["QRFARM_SCP_RECEIVE_PATH"] = receive_path
        self.children: list[Child] = []
        root.mkdir(parents=True, exist_ok=True)
        self.cli("db", "upgrade")
        self.cli("node", "add", NODE, f"ORTHANC@{LOCALHOST}:{orthanc_port}")

    def cli(self, *argv: str) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "qrfarm.cli", *argv],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise BenchError(f"qrfarm {' '.join(argv)}: {result.stdout}{result.stderr}")

    def start(self) -> None:
        for name, argv in (
            ("scp", ["scp"]),
            ("worker", ["worker", "--node", NODE, "--concurrency", "2"]),
            ("scheduler", ["scheduler"]),
        ):
            self.children.append(
                Child(
                    f"qrfarm {name}",
                    [sys.executable, "-m", "qrfarm.cli", *argv],
                    cwd=self.root,
                    log=self.root / f"{name}.log",
                    env=self.env,
                )
            )
        self.children[0].wait_listening(self.scp_port)
        for child in self.children:
            if not child.running():
                raise BenchError(f"{child.name} exited\n{child.log_tail()}")

    def stop(self) -> None:
        for child in reversed(self.children):
            # The main process first: a Celery worker stops its own pool children.
            if child.running():
                with contextlib.suppress(ProcessLookupError):
                    child.popen.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.popen.wait(30)
            child.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {c.name} ---\n{c.log_tail()}" for c in self.children)


def forget_instances(farm: Farm) -> None:
    """Remove what the farm stored and recorded, between two runs of the same move.

    A farm that already holds an instance compares it to the one received
    and writes nothing: without this every run after the first would skip
    the writes that DCMTK's and the bare SCP's runs all make.
    """
    import psycopg

    storage = farm.root / "storage"
    for entry in storage.iterdir() if storage.is_dir() else []:
        # Not the running SCP's own temp folder (.incoming): it receives into it.
        if entry.name != ".incoming":
            shutil.rmtree(entry, ignore_errors=True)
    with psycopg.connect(FARM_DB_DSN, autocommit=True) as connection:
        connection.execute("DELETE FROM received_instances")
        connection.execute("DELETE FROM orphan_instances")


@contextlib.contextmanager
def farm_client(farm: Farm) -> Iterator[Any]:
    from qrfarm.client import Client
    from qrfarm.config import Settings

    saved = dict(os.environ)
    os.environ.update({k: v for k, v in farm.env.items() if k.startswith("QRFARM_")})
    client = Client.from_settings(Settings())
    try:
        yield client
    finally:
        client.close()
        os.environ.clear()
        os.environ.update(saved)


# --- measurements -------------------------------------------------------------------


def movescu(orthanc_port: int, destination: str, study_uid: str, mode: str) -> float:
    argv = [
        MOVESCU,
        "-S",
        "-aet",
        CALLING_AE,
        "-aec",
        "ORTHANC",
        "-aem",
        destination,
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study_uid}",
        LOCALHOST,
        str(orthanc_port),
    ]
    t0 = time.perf_counter()
    result = subprocess.run(argv, env=mode_env(mode), capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    if result.returncode != 0:
        raise BenchError(f"movescu to {destination}: {result.stdout}{result.stderr}")
    return seconds


def dcmtk_move(
    kind: str, mode: str, orthanc_port: int, study_uid: str, ports: dict[str, int], work: Path
) -> tuple[float, int]:
    """One movescu run into a fresh receiver; (seconds, files received)."""
    work.mkdir(parents=True)
    start = start_storescp if kind == "storescp" else start_bare
    receiver: FileReceiver = start(work, mode)
    try:
        # Orthanc knows the destination at a fixed port: move the receiver there.
        if receiver.port != ports[receiver.ae_title]:
            raise BenchError("receiver port mismatch")
        seconds = movescu(orthanc_port, receiver.ae_title, study_uid, mode)
        return seconds, receiver.count()["files"]
    finally:
        receiver.stop()


def findscu(orthanc_port: int) -> float:
    argv = [
        FINDSCU,
        "-S",
        "-aet",
        CALLING_AE,
        "-aec",
        "ORTHANC",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"PatientID={PATIENT_ID}",
        "-k",
        "StudyInstanceUID",
        LOCALHOST,
        str(orthanc_port),
    ]
    t0 = time.perf_counter()
    result = subprocess.run(
        argv, env=mode_env("nodelay"), capture_output=True, text=True, timeout=60
    )
    seconds = time.perf_counter() - t0
    if result.returncode != 0:
        raise BenchError(f"findscu: {result.stdout}{result.stderr}")
    return seconds


def raw_finds(orthanc_port: int, count: int) -> list[float]:
    from qrfarm.dicom import Connection, Level, Node, Operation, Root, build_query_identifier
    from qrfarm.dicom.contexts import qr_contexts

    node = Node("ORTHANC", LOCALHOST, orthanc_port)
    identifier = build_query_identifier(Root.STUDY, Level.STUDY, {"PatientID": PATIENT_ID})
    times: list[float] = []
    with Connection.open(node, qr_contexts([Operation.FIND]), calling_ae=FARM_AE) as conn:
        for _ in range(count):
            t0 = time.perf_counter()
            result = conn.find(identifier)
            times.append(time.perf_counter() - t0)
            if len(result.matches) != 1:
                raise BenchError(f"raw C-FIND: {len(result.matches)} matches, expected 1")
    return times


def packaged_peer_finds(scratch: Path, files: list[Path], count: int) -> dict[str, Any]:
    """Raw C-FINDs on a held association against an Orthanc left as packaged
    (Nagle's algorithm on): what qrfarm's own sockets (TCP_NODELAY, quick
    ACKs) save it from."""
    folder = scratch / "packaged-data"
    folder.mkdir(parents=True, exist_ok=True)
    for file in files:
        shutil.copy(file, folder / file.name)
    orthanc = start_orthanc(scratch / "orthanc-packaged", {}, mode="packaged")
    try:
        load_orthanc(orthanc, folder, len(files))
        times = raw_finds(orthanc.port, count)[5:]
    finally:
        orthanc.stop()
    median_ms = statistics.median(times) * 1000
    print(f"  raw C-FIND median, Orthanc as packaged {median_ms:.2f} ms", flush=True)
    return {"runs_s": times, "median_ms": median_ms}


_NEXT_PORTS: list[int] = []


def patch_receiver_ports() -> None:
    """Make start_storescp/start_bare listen on the ports Orthanc was told about."""
    import store_bench

    original = store_bench.free_port

    def next_port() -> int:
        return _NEXT_PORTS.pop(0) if _NEXT_PORTS else original()

    store_bench.free_port = next_port


def run(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    from qrfarm.dicom import Level

    data = generate(scratch / "data", "ct", args.images, 512, SET_NO)
    study_uid = f"1.2.826.0.1.3680043.10.1234.77.{SET_NO}"
    print(f"data: {len(data.files)} instances, {data.total_bytes / 1e6:.1f} MB", flush=True)
    ports = {"STORESCP": free_port(), "BARESCP": free_port(), FARM_SCP_AE: free_port()}
    patch_receiver_ports()
    results: dict[str, Any] = {"move": {}, "find": {}}

    flush_redis()
    pg_admin(f"DROP DATABASE IF EXISTS {FARM_DB} WITH (FORCE)", f"CREATE DATABASE {FARM_DB}")
    orthanc = start_orthanc(scratch / "orthanc", ports)
    farm: Farm | None = None
    try:
        load_orthanc(orthanc, data.files[0].parent, len(data.files))
        print(f"Orthanc loaded on port {orthanc.port}", flush=True)

        # 1. move: DCMTK and bare pynetdicom
        for label, kind, mode, ae in (
            ("DCMTK movescu -> storescp, as packaged", "storescp", "packaged", "STORESCP"),
            ("DCMTK movescu -> storescp, TCP_NODELAY=1", "storescp", "nodelay", "STORESCP"),
            ("movescu -> bare pynetdicom SCP", "bare", "nodelay", "BARESCP"),
        ):
            runs = []
            for n in range(args.repeat):
                _NEXT_PORTS[:] = [ports[ae]]
                work = scratch / f"move-{kind}-{mode}-{n}"
                seconds, files = dcmtk_move(kind, mode, orthanc.port, study_uid, ports, work)
                if files != len(data.files):
                    raise BenchError(f"{label}: {files} files received, expected {args.images}")
                runs.append(seconds)
                shutil.rmtree(work, ignore_errors=True)
                print(f"  {label:<44} {seconds:7.3f} s", flush=True)
            results["move"][label] = {"runs_s": runs, "median_s": statistics.median(runs)}

        # the farm
        farm = Farm(scratch / "farm", orthanc.port, ports[FARM_SCP_AE], args.scp_receive_path)
        farm.start()
        with farm_client(farm) as client:
            label = "qrfarm move (submit -> completed)"
            runs = []
            for _ in range(args.repeat):
                forget_instances(farm)  # every run writes and records all of them
                t0 = time.perf_counter()
                job = client.move(NODE, Level.STUDY, {"StudyInstanceUID": study_uid})
                summary = client.wait(job, 300, poll_s=0.01)
                seconds = time.perf_counter() - t0
                if summary["state"] != "completed":
                    raise BenchError(f"move job {job}: {summary}\n{farm.logs()}")
                runs.append(seconds)
                print(
                    f"  {label:<44} {seconds:7.3f} s  reported {summary['reported']} "
                    f"recorded {summary['recorded']}",
                    flush=True,
                )
            results["move"][label] = {"runs_s": runs, "median_s": statistics.median(runs)}

            # 2. find: a batch of finds
            keys = {"PatientID": PATIENT_ID}
            for _ in range(3):  # warm the worker and the pooled association
                client.wait(client.find(NODE, Level.STUDY, keys), 60, poll_s=0.01)
            t0 = time.perf_counter()
            jobs = [client.find(NODE, Level.STUDY, keys) for _ in range(args.finds)]
            submitted = time.perf_counter() - t0
            states = [client.wait(j, 600, poll_s=0.02)["state"] for j in jobs]
            farm_batch = time.perf_counter() - t0
            bad = [s for s in states if s != "completed"]
            if bad:
                raise BenchError(f"{len(bad)} find jobs ended {bad[0]}\n{farm.logs()}")
            answers = len(client.results(jobs[-1]))
            if answers != 1:
                raise BenchError(f"find job {jobs[-1]}: {answers} answers, expected 1")
            results["find"][f"qrfarm, {args.finds} finds, submit all, wait all"] = {
                "total_s": farm_batch,
                "per_find_ms": farm_batch / args.finds * 1000,
                "submit_s": submitted,
            }
            print(f"  qrfarm {args.finds} finds: {farm_batch:.2f} s (submit {submitted:.2f} s)")

            # single-find latency through the farm
            single = []
            for _ in range(args.single):
                t0 = time.perf_counter()
                job = client.find(NODE, Level.STUDY, keys)
                state = client.wait(job, 60, poll_s=0.002)["state"]
                single.append(time.perf_counter() - t0)
                if state != "completed":
                    raise BenchError(f"find job {job} ended {state}")
            results["find"]["qrfarm single find, submit -> answers stored"] = {
                "runs_s": single,
                "median_ms": statistics.median(single) * 1000,
            }
            print(f"  qrfarm single find median {statistics.median(single) * 1000:.1f} ms")

        t0 = time.perf_counter()
        for _ in range(args.finds):
            findscu(orthanc.port)
        dcmtk_batch = time.perf_counter() - t0
        results["find"][f"findscu x {args.finds}, sequential, TCP_NODELAY=1"] = {
            "total_s": dcmtk_batch,
            "per_find_ms": dcmtk_batch / args.finds * 1000,
        }
        print(f"  findscu x {args.finds}: {dcmtk_batch:.2f} s")
        raw = raw_finds(orthanc.port, args.single + 5)[5:]
        results["find"]["raw C-FIND on a held association (qrfarm.dicom.Connection)"] = {
            "runs_s": raw,
            "median_ms": statistics.median(raw) * 1000,
        }
        print(f"  raw C-FIND median {statistics.median(raw) * 1000:.2f} ms", flush=True)
        results["find"]["raw C-FIND on a held association, Orthanc as packaged"] = (
            packaged_peer_finds(scratch, data.files[:3], args.single + 5)
        )
    finally:
        if farm is not None:
            farm.stop()
        orthanc.stop()
        flush_redis()
        with contextlib.suppress(Exception):
            pg_admin(f"DROP DATABASE IF EXISTS {FARM_DB} WITH (FORCE)")
    return results


def ratios(results: dict[str, Any], finds: int) -> dict[str, dict[str, float]]:
    move = {k: v["median_s"] for k, v in results["move"].items()}
    q = move["qrfarm move (submit -> completed)"]
    find = results["find"]
    single = find["qrfarm single find, submit -> answers stored"]["median_ms"]
    raw = find["raw C-FIND on a held association (qrfarm.dicom.Connection)"]["median_ms"]
    farm_batch = find[f"qrfarm, {finds} finds, submit all, wait all"]["total_s"]
    dcmtk_batch = find[f"findscu x {finds}, sequential, TCP_NODELAY=1"]["total_s"]
    return {
        "qrfarm move / movescu->bare pynetdicom": {
            "value": q / move["movescu -> bare pynetdicom SCP"],
            "goal_max": 1.3,
        },
        "qrfarm move / DCMTK as packaged": {
            "value": q / move["DCMTK movescu -> storescp, as packaged"],
            "goal_max": 0.2,
        },
        "qrfarm single find / raw C-FIND held assoc": {"value": single / raw, "goal_max": 3.0},
        "held assoc. find: peer as packaged / TCP_NODELAY": {
            "value": find["raw C-FIND on a held association, Orthanc as packaged"]["median_ms"]
            / raw,
            "goal_max": 2.0,
        },
        f"qrfarm {finds} finds / findscu x {finds}": {
            "value": farm_batch / dcmtk_batch,
            "goal_max": float("nan"),
        },
    }


def table(results: dict[str, Any]) -> str:
    lines = [f"{'move, one study, STUDY level':<62} {'median s':>10}  runs s"]
    for label, r in results["move"].items():
        runs = ", ".join(f"{s:.2f}" for s in r["runs_s"])
        lines.append(f"{label:<62} {r['median_s']:>10.3f}  {runs}")
    lines.append("")
    lines.append(f"{'find, STUDY level':<62} {'total s':>10} {'ms/find':>9}")
    for label, r in results["find"].items():
        if "total_s" in r:
            lines.append(f"{label:<62} {r['total_s']:>10.2f} {r['per_find_ms']:>9.1f}")
        else:
            lines.append(f"{label:<62} {'median':>10} {r['median_ms']:>9.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Move and find through the qrfarm farm.")
    parser.add_argument("--images", type=int, default=200, help="CT images 512x512 (200)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per move (median)")
    parser.add_argument("--finds", type=int, default=100, help="finds in the batch (100)")
    parser.add_argument("--single", type=int, default=20, help="single-find samples (20)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument(
        "--scp-receive-path",
        choices=("pynetdicom", "asyncio"),
        help="the farm's storage SCP receive path (default: the setting's default)",
    )
    args = parser.parse_args(argv)
    for tool in (MOVESCU, FINDSCU, STORESCP, STORESCU, ORTHANC):
        if not os.access(tool, os.X_OK):
            raise BenchError(f"missing {tool}")
    began = time.monotonic()
    at_start = versions()
    print("versions: " + ", ".join(f"{k} {v}" for k, v in at_start.items()), flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="qrfarm-farm-bench-"))
    try:
        results = run(args, scratch)
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    computed = ratios(results, args.finds)
    print()
    print(table(results))
    print()
    print("ratios:")
    for key, r in computed.items():
        goal = "" if r["goal_max"] != r["goal_max"] else f"  (goal <= {r['goal_max']})"
        print(f"  {key:<46} {r['value']:7.3f}{goal}")
    elapsed = time.monotonic() - began
    print(f"\ntotal time {elapsed:.0f} s")
    if args.json is not None:
        payload = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "argv": sys.argv,
            "versions": at_start,
            "images": args.images,
            "results": results,
            "ratios": {
                k: {
                    "value": r["value"],
                    "goal_max": None if r["goal_max"] != r["goal_max"] else r["goal_max"],
                }
                for k, r in computed.items()
            },
            "elapsed_s": elapsed,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"farm_bench: {exc}", file=sys.stderr)
        sys.exit(2)
