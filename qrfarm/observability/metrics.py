"""The Prometheus metrics each service counts itself (the API adds the ones read
from the database: jobs by state, queue depth, webhooks, prefetches).

A Celery worker runs its tasks in pool processes: with
``PROMETHEUS_MULTIPROC_DIR`` set (``qrfarm worker`` sets it when it serves
metrics), each writes its values to files there and the main process serves
their sum.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    multiprocess,
    start_http_server,
)

# --- the storage SCP -----------------------------------------------------------
STORES = Counter(
    "qrfarm_scp_stores",
    "C-STOREs answered by the storage SCP, by outcome.",
    ["outcome"],  # stored, orphan, refused, out_of_resources
)
RECEIVED_BYTES = Counter("qrfarm_scp_received_bytes", "Bytes of the instances stored.")
STORE_SECONDS = Histogram(
    "qrfarm_scp_store_seconds",
    "From a C-STORE's data set received to its answer: parse, durable write, record.",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)
SCP_ASSOCIATIONS = Counter(
    "qrfarm_scp_associations",
    "Associations asked of the storage SCP, by result.",
    ["result"],  # accepted, rejected
)

# --- workers -------------------------------------------------------------------
ASSOCIATIONS = Counter(
    "qrfarm_node_associations",
    "Associations to PACS nodes, by node and event.",
    ["node", "event"],  # opened, rejected, aborted, unreachable
)
ATTEMPTS = Counter("qrfarm_job_attempts_run", "Attempts at jobs run here, by outcome.", ["outcome"])
RETRIES = Counter(
    "qrfarm_job_retries",
    "Jobs queued again, by why: a transient error, or instances missing.",
    ["reason"],
)
HL7_MESSAGES = Counter(
    "qrfarm_hl7_messages", "HL7 messages answered, by acknowledgement code.", ["code"]
)
RECONCILIATIONS = Counter("qrfarm_reconciliations", "Jobs reconciled, by outcome.", ["outcome"])


def serve(port: int, host: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from outside
    """Serve this process's metrics (or, in multiprocess mode, the sum of all)."""
    registry: CollectorRegistry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, addr=host, registry=registry)


def use_multiprocess_folder(base: Path, name: str) -> None:
    """Make this process's children write their values to files under ``base``
    (each child must import prometheus_client after this), for :func:`serve`
    here to sum them."""
    folder = (base / f"{name}-{os.getpid()}").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def process_exited(pid: int) -> None:
    """Drop a dead pool process's live gauges (its counters stay summed)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
