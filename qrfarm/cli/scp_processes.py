"""`qrfarm scp --processes N`: one bound socket, N storage SCP processes serving it.

The parent binds the port and hands the socket to each child (``--listen-fd``):
an association goes to whichever process is free to accept it, not by a hash
of its addresses as with SO_REUSEPORT. It listens only once every child has
said it serves (a byte on ``--ready-fd``); children that die are started
again; on SIGTERM it closes its socket first, then every child drains its own.
Their metrics are summed here.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
import time

from ..config import Settings
from ..observability import metrics
from ..scp import bound_socket
from .common import EXIT_OK, out
from .supervisor import Child, supervise

READY_TIMEOUT_S = 60.0
SCP_BACKLOG = 64


def run_scp_processes(
    settings: Settings, host: str, port: int, ae_title: str | None, count: int
) -> int:
    """Run ``count`` SCP processes on ``host:port`` until SIGTERM or SIGINT."""
    if settings.metrics_port is not None:
        metrics.use_multiprocess_folder(settings.data_dir / "metrics", "scp")
    listener = bound_socket(host, port)
    fd = listener.fileno()
    ready_read, ready_write = os.pipe()  # each child writes a byte once it serves
    if settings.metrics_port is not None:
        metrics.serve(settings.metrics_port, settings.metrics_host)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    # The children log as this process does (-v: info, -vv: debug).
    level = logging.getLogger().getEffectiveLevel()
    verbosity = ["-vv"] if level <= logging.DEBUG else ["-v"] if level <= logging.INFO else []
    argv = [*verbosity, "scp", "--listen-fd", str(fd), "--ready-fd", str(ready_write)]
    argv += ["--host", host, "--port", str(port), "--aet", ae_title or settings.scp_ae_title]
    children = [
        Child(f"storage SCP {n + 1}/{count}", argv, pass_fds=(fd, ready_write))
        for n in range(count)
    ]

    def listen_when_ready() -> None:
        # Listening only once every process serves: else the first one ready
        # takes every association of the first moments, and keeps them.
        ready = _wait_ready(ready_read, count, READY_TIMEOUT_S, stop)
        listener.listen(SCP_BACKLOG)
        out.print(
            f"storage SCP: {ready} of {count} processes on {host}:{listener.getsockname()[1]}",
            highlight=False,
        )

    supervise(children, stop, together=True, on_started=listen_when_ready, on_stop=listener.close)
    return EXIT_OK


def _wait_ready(ready_read: int, count: int, timeout_s: float, stop: threading.Event) -> int:
    """How many children said they serve, waiting for all of them at most
    ``timeout_s`` (or until ``stop``)."""
    deadline = time.monotonic() + timeout_s
    ready = 0
    while ready < count and not stop.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if select.select([ready_read], [], [], min(left, 0.5))[0]:
            ready += len(os.read(ready_read, count - ready))
    return ready
