"""The farm at scale: K simulated PACS, 1, 2 and 4 workers, 1 and 2 storage SCPs.

Each PACS is qrfarm's sandbox PACS (pynetdicom, `qrfarm sandbox`, a process each) with its own
studies (distinct UIDs) and a limit of simultaneous associations that it
enforces itself (refusing above it) and counts (its peak). The farm runs as
processes on PostgreSQL (database ``qrfarm_scalebench``, created and dropped
here) and Redis DB 12 (flushed): ``qrfarm scp`` (one, or two sharing the
port with SO_REUSEPORT), ``qrfarm worker --concurrency C`` (N of them) and
``qrfarm scheduler``. For each shape the same jobs are submitted at once,
a mix of STUDY-level finds, STUDY-level moves and SERIES-level gets (or
finds only, or moves only: ``--mix``), and the clock runs from the first
submit to the last job's end. It reports jobs/s, instances/s (recorded),
the peak associations each PACS saw (never above its limit), and whether
every job ended reconciled (``completed``).

    .venv/bin/python bench/farm_scale.py [--pacs 4] [--jobs-per-pacs 60]
        [--workers 1,2,4] [--scps 1,2] [--limit 2] [--mix mixed|find|move]
        [--concurrency 2] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from farm_bench import farm_client, pg_admin
from store_bench import LOCALHOST, BenchError, Child, free_port, versions

from qrfarm.dicom import Level
from qrfarm.jobs.nodes import NodeSpec, upsert_node

DB = "qrfarm_scalebench"
DB_URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB}"
BROKER = "redis://127.0.0.1:6379/12"
SCP_AE = "QRFARMSCP"
UID_ROOT = "1.2.826.0.1.3680043.10.1079"
ENDED = {"completed", "partial", "failed", "cancelled"}


@dataclass(frozen=True)
class Study:
    pacs: int
    number: int
    instances: int

    @property
    def uid(self) -> str:
        return f"{UID_ROOT}.{self.pacs}.{self.number}"

    @property
    def series(self) -> str:
        return f"{self.uid}.1"

    @property
    def patient(self) -> str:
        return f"SCALE{self.pacs:02d}{self.number % 5}"


def write_studies(folder: Path, pacs: int, studies: int, per_study: int) -> list[Path]:
    """Small CT studies of the PACS's own, 64x64 16-bit (about 8 kB each)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian

    files = []
    for number in range(1, studies + 1):
        study = Study(pacs, number, per_study)
        for n in range(1, per_study + 1):
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
            ds.file_meta.MediaStorageSOPInstanceUID = f"{study.series}.{n}"
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds.SOPClassUID = CTImageStorage
            ds.SOPInstanceUID = f"{study.series}.{n}"
            ds.StudyInstanceUID = study.uid
            ds.SeriesInstanceUID = study.series
            ds.PatientID = study.patient
            ds.PatientName = f"Scale^{pacs}"
            ds.StudyDate = "20250101"
            ds.StudyTime = "120000"
            ds.AccessionNumber = f"A{pacs}{number}"
            ds.StudyID = str(number)
            ds.Modality = "CT"
            ds.SeriesNumber = 1
            ds.InstanceNumber = n
            ds.Rows = ds.Columns = 64
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated = ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 0
            ds.PixelData = bytes((n + i) % 256 for i in range(64 * 64 * 2))
            path = folder / f"{number:03d}-{n:03d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
    return files


def farm_env(
    root: Path, scp_port: int, db_url: str = DB_URL, broker: str = BROKER
) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("QRFARM_")},
        "QRFARM_DATABASE_URL": db_url,
        "QRFARM_BROKER_URL": broker,
        "QRFARM_STORAGE_ROOT": str(root / "storage"),
        "QRFARM_DATA_DIR": str(root / "data"),
        "QRFARM_SCP_PORT": str(scp_port),
        "QRFARM_SCP_AE_TITLE": SCP_AE,
        "QRFARM_ALLOWED_HOSTS": LOCALHOST,
        "QRFARM_CONFIG": str(root / "none.toml"),
        "QRFARM_RECONCILE_GRACE_S": "5",
        "QRFARM_SCHEDULER_INTERVAL_S": "0.5",
    }


def fresh_farm_state(db: str, db_url: str, broker: str) -> None:
    """An empty, migrated database and an empty broker database, for one shape."""
    import redis

    from qrfarm.models import upgrade

    pg_admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)', f'CREATE DATABASE "{db}"')
    redis.Redis.from_url(broker).flushdb()
    upgrade(db_url)


class FarmProcesses:
    """``qrfarm`` commands of one shape as child processes, logging into its folder."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.children: list[Child] = []

    def start(self, name: str, *argv: str) -> Child:
        child = Child(
            name,
            [sys.executable, "-m", "qrfarm.cli", *argv],
            cwd=self.root,
            log=self.root / f"{name}.log",
            env=self.env,
        )
        self.children.append(child)
        return child

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()


def count_states(states: dict[int, dict[str, Any]]) -> dict[str, int]:
    """How many jobs ended in each state."""
    counts: dict[str, int] = {}
    for summary in states.values():
        counts[summary["state"]] = counts.get(summary["state"], 0) + 1
    return counts


def write_results(path: Path, results: list[dict[str, Any]]) -> None:
    path.write_text(
        json.dumps({"versions": versions(), "cpus": os.cpu_count(), "results": results}, indent=2)
    )


def run_shape(
    scratch: Path,
    workers: int,
    scps: int,
    pacs_files: list[list[Path]],
    jobs_per_pacs: int,
    limit: int,
    per_study: int,
    mix: str = "mixed",
    concurrency: int = 2,
) -> dict[str, Any]:
    root = scratch / f"w{workers}-s{scps}"
    root.mkdir(parents=True)
    scp_port = free_port()
    env = farm_env(root, scp_port)
    fresh_farm_state(DB, DB_URL, BROKER)
    farm = FarmProcesses(root, env)
    sandboxes: list[tuple[Child, str, int]] = []
    try:
        # Each PACS a process of its own: in one, they would share one GIL.
        for n, files in enumerate(pacs_files, start=1):
            port = free_port()
            pacs = Child(
                f"sim{n}",
                [
                    sys.executable,
                    "-m",
                    "qrfarm.cli",
                    "sandbox",
                    "--data",
                    str(files[0].parent),
                    "--port",
                    str(port),
                    "--aet",
                    f"SIM{n}",
                    "--dest",
                    f"{SCP_AE}={LOCALHOST}:{scp_port}",
                    "--max-associations",
                    str(limit),
                ],
                cwd=root,
                log=root / f"sim{n}.log",
                env=env,
            )
            pacs.wait_listening(port)
            sandboxes.append((pacs, f"SIM{n}", port))

        for n in range(scps):
            farm.start(f"scp{n}", "scp").wait_listening(scp_port)
        farm.start("scheduler", "scheduler")
        with farm_client_for(env) as client:
            with client.sessions() as session, session.begin():
                for n, (_, ae_title, port) in enumerate(sandboxes, start=1):
                    upsert_node(
                        session,
                        NodeSpec(f"sim{n}", ae_title, LOCALHOST, port, max_associations=limit),
                    )
            for n in range(workers):
                farm.start(f"worker{n}", "worker", "--concurrency", str(concurrency))
            time.sleep(3)  # workers up and consuming (not timed)
            plan = plan_jobs(len(sandboxes), jobs_per_pacs, per_study, len(pacs_files[0]), mix)
            started = time.monotonic()
            jobs = [submit(client, job) for job in plan]
            states = wait_all(client, jobs, timeout=900)
            elapsed = time.monotonic() - started
            recorded = sum(s["recorded"] for s in states.values() if s["recorded"])
        counts = count_states(states)
        seen = []
        for pacs, _, _ in sandboxes:
            pacs.stop()  # SIGTERM: it prints what it saw as its last line
            seen.append(json.loads(pacs.log_path.read_text().strip().splitlines()[-1]))
        return {
            "workers": workers,
            "scps": scps,
            "jobs": len(jobs),
            "kinds": {k: sum(1 for j in plan if j[0] == k) for k in ("find", "move", "get")},
            "seconds": round(elapsed, 2),
            "jobs_per_s": round(len(jobs) / elapsed, 2),
            "instances": recorded,
            "instances_per_s": round(recorded / elapsed, 1),
            "states": counts,
            "all_completed": counts == {"completed": len(jobs)},
            "peak_associations": [s["peak_associations"] for s in seen],
            "refused_associations": [s["refused_associations"] for s in seen],
            "limit": limit,
        }
    finally:
        farm.stop()
        for pacs, _, _ in sandboxes:
            pacs.stop()


def farm_client_for(env: dict[str, str]) -> Any:
    class _Farm:
        pass

    farm = _Farm()
    farm.env = env  # type: ignore[attr-defined]
    return farm_client(farm)  # type: ignore[arg-type]


def plan_jobs(
    pacs_count: int, per_pacs: int, per_study: int, files_per_pacs: int, mix: str = "mixed"
) -> list[tuple[str, int, Study]]:
    """The jobs spread over the PACS and their studies.

    ``mixed``: half finds, a third moves, the rest gets; ``find`` or ``move``: that kind only.
    """
    studies = files_per_pacs // per_study
    plan = []
    for n in range(per_pacs):
        mixed = "find" if n % 6 < 3 else ("move" if n % 6 < 5 else "get")
        kind = mixed if mix == "mixed" else mix
        for pacs in range(1, pacs_count + 1):
            plan.append((kind, pacs, Study(pacs, n % studies + 1, per_study)))
    return plan


def submit(client: Any, job: tuple[str, int, Study]) -> int:
    kind, pacs, study = job
    node = f"sim{pacs}"
    if kind == "find":
        return int(client.find(node, Level.STUDY, {"PatientID": study.patient}))
    if kind == "move":
        return int(client.move(node, Level.STUDY, {"StudyInstanceUID": study.uid}))
    return int(
        client.get(
            node, Level.SERIES, {"StudyInstanceUID": study.uid, "SeriesInstanceUID": study.series}
        )
    )


def wait_all(client: Any, jobs: list[int], timeout: float) -> dict[int, dict[str, Any]]:
    """One query a round for the states (polling each job would load the farm itself)."""
    from sqlalchemy import select

    from qrfarm.models import Job

    deadline = time.monotonic() + timeout
    while True:
        with client.sessions() as session:
            rows = session.execute(
                select(Job.id, Job.state, Job.recorded_count).where(Job.id.in_(jobs))
            ).all()
        if all(state.value in ENDED for _, state, _ in rows):
            return {
                job_id: {"state": state.value, "recorded": recorded}
                for job_id, state, recorded in rows
            }
        if time.monotonic() > deadline:
            raise BenchError(f"jobs did not end in {timeout} s")
        time.sleep(0.2)


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| workers | SCPs | jobs | seconds | jobs/s | instances | instances/s "
        "| peak assoc. per PACS (limit) | all completed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['workers']} | {r['scps']} | {r['jobs']} | {r['seconds']} | {r['jobs_per_s']} "
            f"| {r['instances']} | {r['instances_per_s']} "
            f"| {', '.join(map(str, r['peak_associations']))} ({r['limit']}) "
            f"| {'yes' if r['all_completed'] else r['states']} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pacs", type=int, default=4)
    parser.add_argument("--studies", type=int, default=12, help="Studies per PACS.")
    parser.add_argument("--per-study", type=int, default=10, help="Instances per study.")
    parser.add_argument("--jobs-per-pacs", type=int, default=60)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--scps", default="1,2")
    parser.add_argument("--limit", type=int, default=2, help="Associations each PACS allows.")
    parser.add_argument(
        "--mix",
        choices=("mixed", "find", "move"),
        default="mixed",
        help="mixed: half finds, a third moves, the rest gets; find or move: that kind only.",
    )
    parser.add_argument("--concurrency", type=int, default=2, help="Pool processes of each worker.")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    # SIGTERM ends the run through the finally clauses: no farm left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = []
    with tempfile.TemporaryDirectory(prefix="qrfarm-scale-") as tmp:
        scratch = Path(tmp)
        pacs_files = []
        for n in range(1, args.pacs + 1):
            folder = scratch / f"pacs{n}"
            folder.mkdir()
            pacs_files.append(write_studies(folder, n, args.studies, args.per_study))
        try:
            for scps in [int(s) for s in args.scps.split(",")]:
                for workers in [int(w) for w in args.workers.split(",")]:
                    result = run_shape(
                        scratch,
                        workers,
                        scps,
                        pacs_files,
                        args.jobs_per_pacs,
                        args.limit,
                        args.per_study,
                        args.mix,
                        args.concurrency,
                    )
                    print(json.dumps(result), flush=True)
                    results.append(result)
        finally:
            pg_admin(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
    print()
    print(table(results))
    if args.json:
        write_results(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
