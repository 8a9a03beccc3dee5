"""``qrfarm scp`` with the steps of its C-STORE handler timed: where an instance's time goes.

Run by ``store_bench.py --qrfarm-timings DIR`` in place of ``qrfarm scp``
(same settings, same environment). Wraps, by name, the steps the handler
calls and writes per-step timings as JSON to ``$QRFARM_BENCH_TIMINGS`` when
the process exits. A step whose name is no longer found is listed under
"missing" rather than failing: the wrapping follows the code, not the other
way round. The timers cost a few microseconds per call.
"""

from __future__ import annotations

import atexit
import inspect
import json
import os
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

_lock = threading.Lock()
_samples: dict[str, list[float]] = defaultdict(list)
_missing: list[str] = []


def _timed(step: str, function: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(function):

        async def waited(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                with _lock:
                    _samples[step].append(elapsed)

        return waited

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - started
            with _lock:
                _samples[step].append(elapsed)

    return wrapper


def _wrap(owner: Any, attribute: str, step: str) -> None:
    original = getattr(owner, attribute, None)
    if original is None:
        _missing.append(f"{getattr(owner, '__name__', owner)}.{attribute}")
        return
    setattr(owner, attribute, _timed(step, original))


def install() -> None:
    from sqlalchemy.engine import base as sa_engine

    import qrfarm.jobs.ingest as ingest
    import qrfarm.scp.aio.connection as aio_connection
    import qrfarm.scp.aio.server as aio_server
    import qrfarm.scp.committer as committer
    import qrfarm.scp.handlers as handlers
    import qrfarm.scp.service as service
    import qrfarm.storage as storage

    # handle_store is looked up in service.py when the server is made (pynetdicom path).
    _wrap(service, "handle_store", "handle_store (pynetdicom path, all of it)")
    # The asyncio path: the loop's part, and the wait for the thread pool.
    _wrap(aio_connection.Connection, "_p_data", "loop: P-DATA taken (per PDU)")
    _wrap(aio_connection.Connection, "_command", "loop: command set, temp file opened")
    _wrap(aio_connection.Connection, "_store", "loop: store awaited and answered")
    _wrap(aio_server.AioStorageServer, "blocking", "  loop: waiting on the pool")
    # Either path, in the thread that stores.
    _wrap(handlers, "store_spooled", "store_spooled (all of the store)")
    _wrap(handlers, "facts_of", "  facts_of (header parse, checks)")
    _wrap(storage.InstanceStorage, "store_file", "  store_file (fsync, link)")
    _wrap(storage, "_fsync_file", "    fsync of the file")
    _wrap(committer.GroupCommitter, "record", "  committer.record (group, commit)")
    _wrap(ingest, "record_stored_batch", "    record_stored_batch (one group)")
    _wrap(storage, "_fsync_dir", "      fsync of a folder")
    _wrap(handlers, "correlate", "      correlate (queries)")
    _wrap(sa_engine.Connection, "commit", "      commit")


def summary() -> dict[str, Any]:
    steps: dict[str, dict[str, float]] = {}
    with _lock:
        for step, values in _samples.items():
            ordered = sorted(values)
            n = len(ordered)
            steps[step] = {
                "n": n,
                "mean_ms": 1000 * sum(ordered) / n,
                "median_ms": 1000 * ordered[n // 2],
                "p90_ms": 1000 * ordered[min(n - 1, int(n * 0.9))],
                "total_s": sum(ordered),
            }
    return {"steps": steps, "missing": list(_missing)}


def _write_summary() -> None:
    target = os.environ.get("QRFARM_BENCH_TIMINGS")
    if target:
        Path(target).write_text(json.dumps(summary(), indent=2) + "\n")


def main() -> None:
    install()
    atexit.register(_write_summary)
    from qrfarm.cli import main as qrfarm_main

    sys.argv = ["qrfarm", "scp", *sys.argv[1:]]
    qrfarm_main()


if __name__ == "__main__":
    main()
