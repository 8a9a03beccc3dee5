"""Two workers on two PACS: find and move throughput against one worker.

Two real PACS, Orthanc and DCMTK dcmqrscp (TCP_NODELAY=1, as the tests run
them), hold the same small studies (64x64 CT). The farm runs as processes on
PostgreSQL (database ``qrfarm_workersbench``, created and dropped here) and
Redis DB 13 (flushed): ``qrfarm scp``, ``qrfarm scheduler`` and one or two
``qrfarm worker --node orthanc --node dcmqrscp --concurrency C``. For each
shape, a batch of STUDY-level finds (half on each PACS) is submitted at once
and timed from the first submit until every job has ended; then a batch of
STUDY-level moves the same way. Throughput is jobs per second; the ratio
that matters is two workers against one, at the same concurrency.

    .venv/bin/python bench/farm_workers.py [--finds 300] [--moves 40]
        [--concurrency 1,2] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' real peers

from farm_bench import pg_admin
from farm_scale import (
    FarmProcesses,
    Study,
    count_states,
    farm_client_for,
    farm_env,
    fresh_farm_state,
    wait_all,
    write_results,
    write_studies,
)
from store_bench import LOCALHOST, BenchError, free_port

from qrfarm.dicom import Level
from qrfarm.jobs.nodes import NodeSpec, upsert_node
from tests.peers.dcmqrscp import DcmqrscpPeer
from tests.peers.orthanc import ORTHANC_BINARIES, OrthancPeer

DB = "qrfarm_workersbench"
DB_URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB}"
BROKER = "redis://127.0.0.1:6379/13"
SCP_AE = "QRFARMSCP"
NODES = ("orthanc", "dcmqrscp")
STUDIES = 6
PER_STUDY = 10


def start_pacs(scratch: Path, data: Path, scp_port: int) -> tuple[OrthancPeer, DcmqrscpPeer]:
    binary = next((b for b in ORTHANC_BINARIES if Path(b).is_file()), None)
    if binary is None:
        raise BenchError(f"Orthanc is not installed ({' or '.join(ORTHANC_BINARIES)})")
    destinations = {SCP_AE: scp_port}
    orthanc = OrthancPeer.start(binary, scratch / "orthanc", destinations)
    dcmqrscp = DcmqrscpPeer.start(scratch / "dcmqrscp", destinations, callers=("QRFARM",))
    files = sorted(data.glob("*.dcm"))
    if orthanc.load(files) != len(files):
        raise BenchError("Orthanc did not take every file")
    dcmqrscp.load(data)
    return orthanc, dcmqrscp


def batch(client: Any, kind: str, count: int) -> dict[str, Any]:
    """``count`` jobs of one kind, half on each PACS, submitted at once."""
    jobs = []
    started = time.monotonic()
    for n in range(count):
        node = NODES[n % 2]
        study = Study(1, n // 2 % STUDIES + 1, PER_STUDY)
        if kind == "find":
            jobs.append(int(client.find(node, Level.STUDY, {"PatientID": study.patient})))
        else:
            jobs.append(int(client.move(node, Level.STUDY, {"StudyInstanceUID": study.uid})))
    states = wait_all(client, jobs, timeout=900)
    elapsed = time.monotonic() - started
    counts = count_states(states)
    return {
        "jobs": count,
        "seconds": round(elapsed, 2),
        "jobs_per_s": round(count / elapsed, 2),
        "instances": sum(s["recorded"] or 0 for s in states.values()),
        "all_completed": counts == {"completed": count},
        "states": counts,
    }


def run_shape(
    scratch: Path,
    workers: int,
    concurrency: int,
    pacs: tuple[OrthancPeer, DcmqrscpPeer],
    scp_port: int,
    finds: int,
    moves: int,
) -> dict[str, Any]:
    root = scratch / f"w{workers}-c{concurrency}"
    root.mkdir(parents=True)
    env = farm_env(root, scp_port, DB_URL, BROKER)
    fresh_farm_state(DB, DB_URL, BROKER)
    farm = FarmProcesses(root, env)
    try:
        farm.start("scp", "scp").wait_listening(scp_port)
        farm.start("scheduler", "scheduler")
        with farm_client_for(env) as client:
            with client.sessions() as session, session.begin():
                for name, peer in zip(NODES, pacs, strict=True):
                    upsert_node(
                        session,
                        NodeSpec(name, peer.ae_title, LOCALHOST, peer.port, max_associations=8),
                    )
            node_args = [arg for name in NODES for arg in ("--node", name)]
            for n in range(workers):
                farm.start(f"worker{n}", "worker", *node_args, "--concurrency", str(concurrency))
            time.sleep(3)  # workers up and consuming (not timed)
            batch(client, "find", 4 * workers * concurrency)  # associations opened (not timed)
            result = {
                "workers": workers,
                "concurrency": concurrency,
                "find": batch(client, "find", finds),
                "move": batch(client, "move", moves),
            }
        for child in farm.children:
            if not child.running():
                raise BenchError(f"{child.name} exited\n{child.log_tail()}")
        return result
    finally:
        farm.stop()


def summary(results: list[dict[str, Any]]) -> str:
    lines = [
        "| workers | concurrency | finds | s | finds/s | moves | s | moves/s | instances/s "
        "| all completed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        f, m = r["find"], r["move"]
        done = (
            "yes" if f["all_completed"] and m["all_completed"] else f"{f['states']} {m['states']}"
        )
        lines.append(
            f"| {r['workers']} | {r['concurrency']} | {f['jobs']} | {f['seconds']} "
            f"| {f['jobs_per_s']} | {m['jobs']} | {m['seconds']} | {m['jobs_per_s']} "
            f"| {round(m['instances'] / m['seconds'], 1)} | {done} |"
        )
    lines.append("")
    for concurrency in sorted({r["concurrency"] for r in results}):
        by_workers = {r["workers"]: r for r in results if r["concurrency"] == concurrency}
        if 1 in by_workers and 2 in by_workers:
            one, two = by_workers[1], by_workers[2]
            lines.append(
                f"concurrency {concurrency}: two workers / one, finds "
                f"{two['find']['jobs_per_s'] / one['find']['jobs_per_s']:.2f}, moves "
                f"{two['move']['jobs_per_s'] / one['move']['jobs_per_s']:.2f}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--finds", type=int, default=300, help="Find jobs per shape.")
    parser.add_argument("--moves", type=int, default=40, help="Move jobs per shape.")
    parser.add_argument(
        "--concurrency", default="1,2", help="Pool processes of each worker, one shape each."
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    # SIGTERM ends the run through the finally clauses: no farm left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = []
    with tempfile.TemporaryDirectory(prefix="qrfarm-workers-") as tmp:
        scratch = Path(tmp)
        data = scratch / "data"
        data.mkdir()
        write_studies(data, 1, STUDIES, PER_STUDY)
        scp_port = free_port()
        pacs = start_pacs(scratch, data, scp_port)
        try:
            for concurrency in [int(c) for c in args.concurrency.split(",")]:
                for workers in (1, 2):
                    result = run_shape(
                        scratch, workers, concurrency, pacs, scp_port, args.finds, args.moves
                    )
                    print(json.dumps(result), flush=True)
                    results.append(result)
        finally:
            for peer in pacs:
                peer.stop()
            pg_admin(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
    print()
    print(summary(results))
    if args.json:
        write_results(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
