"""`qrfarm serve`: the storage SCP, workers, the scheduler and the REST API as one command
(and the HL7 listener when a rule is configured for it).

Each part runs as its own child process, supervised: one that dies is
started again; SIGTERM stops them all (workers finish or give back their
task: it is acknowledged late).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import Settings
from ..models import make_engine, session_factory, upgrade
from .common import EXIT_OK, app, out, run
from .services import register_configured_nodes
from .supervisor import Child
from .supervisor import supervise as supervise_children

log = logging.getLogger(__name__)


def supervise(
    settings: Settings, workers: int, stop: threading.Event, log_dir: Path | None = None
) -> None:
    """Run the parts until ``stop`` is set; their output goes to ``log_dir`` when given."""

    def log_of(name: str) -> Path | None:
        return None if log_dir is None else log_dir / f"{name}.log"

    children = [
        Child("storage SCP", ["scp"], log_of("scp")),
        Child("scheduler", ["scheduler"], log_of("scheduler")),
        Child("REST API", ["api"], log_of("api")),
        # Without --node it serves every node, and follows those added later.
        Child("worker", ["worker", "--concurrency", str(workers)], log_of("worker")),
    ]
    if settings.hl7_rules or settings.hl7_default_rule:
        children.append(Child("HL7 listener", ["hl7"], log_of("hl7")))
    supervise_children(children, stop)


@app.command()
def serve(
    workers: Annotated[int, typer.Option(help="Worker pool processes.")] = 2,
) -> None:
    """Run the farm on one machine: storage SCP, workers, scheduler and REST API together."""

    def action(settings: Settings) -> int:
        upgrade(settings.database_url)
        engine = make_engine(settings.database_url)
        register_configured_nodes(settings, session_factory(engine))
        engine.dispose()
        stop = threading.Event()

        def on_signal(signum: int, _frame: Any) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        # Addresses only: what precedes "@" in a URL may be a password.
        broker = (settings.broker_url or "embedded").split("@")[-1]
        scheme = "https" if settings.api_tls_cert_file else "http"
        out.print(
            f"qrfarm serving: SCP {settings.scp_ae_title} on {settings.scp_host}:"
            f"{settings.scp_port}, database {settings.database_url.split('@')[-1]}, "
            f"broker {broker}, API {scheme}://{settings.api_host}:"
            f"{settings.api_port} (pid {os.getpid()})",
            highlight=False,
        )
        supervise(settings, workers, stop)
        return EXIT_OK

    run(action)
