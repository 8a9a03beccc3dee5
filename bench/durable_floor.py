"""The waits a durable C-STORE cannot do without, on this machine's disk and
PostgreSQL: what one association's chain of instances pays before any code
of the receiver runs.

For each instance of the bench's sizes (tiny: 9,106 bytes; CT: 525,197), one
after another as one association sends them: the file written and fsynced,
linked into its folder, the folder fsynced, and one row inserted and
committed on PostgreSQL in autocommit (one round trip and a WAL flush). The
medians of each, and their sum: the floor per instance of qrfarm's answer
order (file and folder durable, row committed, then success).

    .venv/bin/python bench/durable_floor.py --count 1000

Uses a scratch folder under the system's temp folder and a table of its own
in the database ``test`` (dropped afterwards); 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

SIZES = {"tiny": 9_106, "ct": 525_197}


def measure(folder: Path, size: int, count: int, conn: psycopg.Connection) -> dict[str, float]:
    data = os.urandom(size)
    final = folder / f"series-{size}"
    final.mkdir()
    steps: dict[str, list[float]] = {
        "file write+fsync": [],
        "link": [],
        "folder fsync": [],
        "row insert+commit": [],
    }
    for number in range(count):
        temp = folder / f"incoming-{size}-{number}"
        started = time.perf_counter()
        handle = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(handle, data)
        os.fsync(handle)
        os.close(handle)
        steps["file write+fsync"].append(time.perf_counter() - started)
        started = time.perf_counter()
        (final / f"{number}.dcm").hardlink_to(temp)
        temp.unlink()
        steps["link"].append(time.perf_counter() - started)
        started = time.perf_counter()
        handle = os.open(final, os.O_RDONLY)
        os.fsync(handle)
        os.close(handle)
        steps["folder fsync"].append(time.perf_counter() - started)
        started = time.perf_counter()
        conn.execute(
            "INSERT INTO durable_floor_probe (uid, path) VALUES (%s, %s)",
            (f"2.25.{uuid.uuid4().int}", f"series-{size}/{number}.dcm"),
        )
        steps["row insert+commit"].append(time.perf_counter() - started)
    return {name: statistics.median(values) * 1e3 for name, values in steps.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="instances of each size")
    parser.add_argument("--dsn", default="host=127.0.0.1 user=postgres dbname=test")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="qrfarm-floor-"))
    try:
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS durable_floor_probe "
                "(id bigserial PRIMARY KEY, uid text UNIQUE NOT NULL, path text NOT NULL)"
            )
            try:
                for name, size in SIZES.items():
                    medians = measure(folder, size, args.count, conn)
                    print(f"{name} ({size} bytes), medians of {args.count}, ms:")
                    for step, value in medians.items():
                        print(f"  {step:20s} {value:7.3f}")
                    print(f"  {'sum':20s} {sum(medians.values()):7.3f}")
            finally:
                conn.execute("DROP TABLE durable_floor_probe")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
