"""Child processes of one command, kept running: `qrfarm serve` and `qrfarm scp --processes`.

Each child is ``python -m qrfarm.cli ...``; one that dies is started again
(not in a tight loop); when told to stop, each gets SIGTERM and time to
finish what it has in hand.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)
CHECK_S = 2.0
RESTART_PAUSE_S = 5.0


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path | None = None
    pass_fds: tuple[int, ...] = ()  # descriptors the child inherits (a listening socket)
    process: subprocess.Popen[bytes] | None = None
    starts: list[float] = field(default_factory=list)

    def start(self) -> None:
        if self.log_path is None:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "qrfarm.cli", *self.argv], pass_fds=self.pass_fds
            )
        else:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("ab") as log_file:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "qrfarm.cli", "-v", *self.argv],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    pass_fds=self.pass_fds,
                )
        self.starts.append(time.monotonic())
        log.info("started %s (pid %d)", self.name, self.process.pid)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal_stop(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float = 30.0) -> None:
        """Wait for it to end after :meth:`signal_stop`; killed after ``timeout``."""
        if not self.alive():
            return
        assert self.process is not None
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def stop(self, timeout: float = 30.0) -> None:
        self.signal_stop()
        self.wait_stopped(timeout)


def supervise(
    children: list[Child],
    stop: threading.Event,
    *,
    together: bool = False,
    on_started: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> None:
    """Start ``children`` and keep them running until ``stop`` is set; then stop them.

    ``together``: SIGTERM to all at once, then wait for each (siblings that
    drain in parallel); else one after another, last started first.
    ``on_started`` runs once all are started; ``on_stop`` first thing when
    stopping, before any child is told.
    """
    for child in children:
        child.start()
    try:
        if on_started is not None:
            on_started()
        while not stop.is_set():
            for child in children:
                if not child.alive() and not stop.is_set():
                    log.warning("%s exited; starting it again", child.name)
                    if child.starts and time.monotonic() - child.starts[-1] < RESTART_PAUSE_S:
                        stop.wait(RESTART_PAUSE_S)
                    if not stop.is_set():
                        child.start()
            stop.wait(CHECK_S)
    finally:
        if on_stop is not None:
            on_stop()
        if together:
            for child in children:
                child.signal_stop()
            for child in children:
                child.wait_stopped()
        else:
            for child in reversed(children):
                child.stop()
