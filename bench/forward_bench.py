"""Forwarding through the farm against DCMTK storescu sending the same files.

One Orthanc (TCP_NODELAY=1) holds ``--images`` CT images 512x512 16-bit; the
farm (PostgreSQL database ``qrfarm_fwdbench``, created and dropped here, Redis
DB 12, flushed before and after; ``qrfarm scp``, ``qrfarm worker --node orthanc
--node dest --concurrency 2`` and ``qrfarm scheduler``) moves them in once.
Then, ``--repeat`` times, each into a fresh destination Orthanc (TCP_NODELAY=1,
its defaults otherwise):

- qrfarm: ``Client.forward`` of the move's job to the destination node, from
  submit until the forward job is ``completed`` (sent, then confirmed by an
  IMAGE-level C-FIND at the destination), with ``--associations``
  associations at most (QRFARM_FORWARD_ASSOCIATIONS; the node's limit is 4);
  the attempt's own time (sending and verifying, without the queue) is
  printed beside it;
- DCMTK: ``storescu`` (TCP_NODELAY=1) sending the same files the farm holds
  over one association, and (``--associations`` above 1) the same split over
  that many storescu processes started together.

    .venv/bin/python bench/forward_bench.py [--images 200] [--repeat 3]
        [--associations 1] [--json results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from farm_bench import farm_client, load_orthanc, pg_admin
from farm_bench import start_orthanc as start_source
from store_bench import (
    LOCALHOST,
    ORTHANC,
    STORESCU,
    UID_ROOT,
    BenchError,
    Child,
    OrthancReceiver,
    free_port,
    generate,
    mode_env,
    versions,
)

FWD_DB = "qrfarm_fwdbench"
FWD_DB_URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{FWD_DB}"
FWD_BROKER = "redis://127.0.0.1:6379/12"
SET_NO = 1


class ForwardFarm:
    """The farm's processes, serving the source's and the destination's queues."""

    def __init__(self, root: Path, scp_port: int, associations: int) -> None:
        self.root = root
        self.scp_port = scp_port
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("QRFARM_")},
            "QRFARM_DATABASE_URL": FWD_DB_URL,
            "QRFARM_BROKER_URL": FWD_BROKER,
            "QRFARM_STORAGE_ROOT": str(root / "storage"),
            "QRFARM_DATA_DIR": str(root / "data"),
            "QRFARM_SCP_PORT": str(scp_port),
            "QRFARM_ALLOWED_HOSTS": LOCALHOST,
            "QRFARM_CONFIG": str(root / "none.toml"),
            "QRFARM_FORWARD_ASSOCIATIONS": str(associations),
        }
        self.children: list[Child] = []
        root.mkdir(parents=True, exist_ok=True)
        self.cli("db", "upgrade")

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
        worker = ["worker", "--node", "orthanc", "--node", "dest", "--concurrency", "2"]
        for name, argv in (("scp", ["scp"]), ("worker", worker), ("scheduler", ["scheduler"])):
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

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {c.name} ---\n{c.log_tail()}" for c in self.children)


@contextlib.contextmanager
def database(keep: bool) -> Iterator[None]:
    pg_admin(f"DROP DATABASE IF EXISTS {FWD_DB} WITH (FORCE)", f"CREATE DATABASE {FWD_DB}")
    try:
        yield
    finally:
        if not keep:  # kept: its jobs, attempts and delivered rows tell where the time went
            pg_admin(f"DROP DATABASE IF EXISTS {FWD_DB} WITH (FORCE)")


def start_destination(workdir: Path) -> OrthancReceiver:
    """A fresh Orthanc (TCP_NODELAY=1) with its defaults, but answering C-FIND
    from any AE title (the farm verifies what arrived with one)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port, http_port = free_port(), free_port()
    config = {
        "Name": "qrfarm-forward-bench",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "Plugins": [],
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAet": "ORTHANC",
        "DicomPort": port,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
    }
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    child = Child(
        "Orthanc",
        [ORTHANC, str(config_path)],
        cwd=workdir,
        log=workdir / "orthanc.log",
        env=mode_env("nodelay"),
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


def storescu(port: int, files: list[Path], processes: int) -> float:
    """storescu processes (TCP_NODELAY=1) started together, each sending a share."""
    shares = [files[n::processes] for n in range(processes)]
    t0 = time.perf_counter()
    running = [
        subprocess.Popen(
            [STORESCU, "-aet", "QRFARM", "-aec", "ORTHANC", LOCALHOST, str(port), *map(str, share)],
            env=mode_env("nodelay"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for share in shares
        if share
    ]
    errors = [p.communicate(timeout=600)[1] for p in running]
    seconds = time.perf_counter() - t0
    if any(p.returncode for p in running):
        raise BenchError(f"storescu failed: {errors}")
    return seconds


def attempt_seconds(client: Any, job_id: int) -> float:
    attempts = client.status(job_id, responses=True)["attempts"]
    from datetime import datetime

    last = attempts[-1]
    return (
        datetime.fromisoformat(last["ended_at"]) - datetime.fromisoformat(last["started_at"])
    ).total_seconds()


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    files_dir = work / "files"
    generate(files_dir, "ct", args.images, 512, SET_NO)
    study_uid = f"{UID_ROOT}{SET_NO}"
    scp_port = free_port()
    source = start_source(work / "source", {"QRFARMSCP": scp_port})
    results: dict[str, Any] = {"qrfarm": [], "qrfarm_attempt": [], "storescu": []}
    if args.associations > 1:
        results["storescu_parallel"] = []
    try:
        load_orthanc(source, files_dir, args.images)
        flush_redis_db()
        with database(args.keep):
            farm = ForwardFarm(work / "farm", scp_port, args.associations)
            farm.cli("node", "add", "orthanc", f"ORTHANC@{LOCALHOST}:{source.port}")
            # A worker serves registered nodes only; each run's destination
            # takes this name with its own port.
            farm.cli("node", "add", "dest", f"ORTHANC@{LOCALHOST}:{source.port}")
            farm.start()
            try:
                with farm_client_of(farm) as client:
                    from qrfarm.dicom import Level

                    move = client.wait(
                        client.move("orthanc", Level.STUDY, {"StudyInstanceUID": study_uid}),
                        600,
                    )
                    if move["state"] != "completed":
                        raise BenchError(f"the move into the farm ended {move}\n{farm.logs()}")
                    held = sorted((work / "farm" / "storage").rglob("*.dcm"))
                    if len(held) != args.images:
                        raise BenchError(f"the farm holds {len(held)} files")
                    for n in range(args.repeat):
                        results["storescu"].append(_dcmtk_run(work / f"dest-dcmtk-{n}", held, 1))
                        if args.associations > 1:
                            results["storescu_parallel"].append(
                                _dcmtk_run(work / f"dest-dcmtk-p{n}", held, args.associations)
                            )
                        seconds, inner = _farm_run(
                            farm, client, work / f"dest-farm-{n}", int(move["id"]), args.images
                        )
                        results["qrfarm"].append(seconds)
                        results["qrfarm_attempt"].append(inner)
                        line = (
                            f"run {n + 1}: qrfarm {seconds:.2f} s (attempt {inner:.2f} s), "
                            f"storescu {results['storescu'][-1]:.2f} s"
                        )
                        if args.associations > 1:
                            parallel = results["storescu_parallel"][-1]
                            line += f", storescu x {args.associations} {parallel:.2f} s"
                        print(line, flush=True)
            finally:
                farm.stop()
    finally:
        source.stop()
        flush_redis_db()
    return results


def _dcmtk_run(workdir: Path, files: list[Path], processes: int) -> float:
    dest = start_destination(workdir)
    try:
        seconds = storescu(dest.port, files, processes)
        _check(dest, len(files))
        return seconds
    finally:
        dest.stop()


def _farm_run(
    farm: ForwardFarm, client: Any, workdir: Path, move_id: int, count: int
) -> tuple[float, float]:
    dest = start_destination(workdir)
    try:
        farm.cli("node", "add", "dest", f"ORTHANC@{LOCALHOST}:{dest.port}")
        t0 = time.perf_counter()
        job = client.wait(client.forward(move_id, "dest"), 600)
        seconds = time.perf_counter() - t0
        if job["state"] != "completed":
            raise BenchError(f"forward ended {job['state']}: {job['error']}\n{farm.logs()}")
        _check(dest, count)
        return seconds, attempt_seconds(client, int(job["id"]))
    finally:
        dest.stop()


def _check(dest: OrthancReceiver, count: int) -> None:
    held = dest.count()["instances"]
    if held != count:
        raise BenchError(f"the destination holds {held} instances, expected {count}")


def flush_redis_db() -> None:
    import redis

    client = redis.Redis.from_url(FWD_BROKER)
    try:
        client.flushdb()
    finally:
        client.close()


@contextlib.contextmanager
def farm_client_of(farm: ForwardFarm) -> Iterator[Any]:
    with farm_client(farm) as client:  # type: ignore[arg-type]
        yield client


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--associations", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the work folder and the database")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qrfarm-fwd-bench-"))
    try:
        results = run(args, work)
    except BenchError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    summary = {
        "images": args.images,
        "associations": args.associations,
        "median_s": {k: statistics.median(v) for k, v in results.items()},
        "runs": results,
        "versions": versions(),
    }
    median = summary["median_s"]
    print(
        f"median of {args.repeat}, {args.associations} association(s): qrfarm forward "
        f"{median['qrfarm']:.2f} s (attempt {median['qrfarm_attempt']:.2f} s), one storescu "
        f"{median['storescu']:.2f} s: ratio {median['qrfarm'] / median['storescu']:.2f} "
        f"(attempt only {median['qrfarm_attempt'] / median['storescu']:.2f})"
    )
    if "storescu_parallel" in median:
        print(
            f"  against {args.associations} storescu at once "
            f"{median['storescu_parallel']:.2f} s: ratio "
            f"{median['qrfarm'] / median['storescu_parallel']:.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
