"""Child processes of one command, kept running: `qrfarm serve` and `qrfarm scp --processes`.

Each child is ``python -P -m qrfarm.cli ...``: ``-P`` keeps the working
folder off its ``sys.path``, so it imports the installed qrfarm even when
started from a folder that holds some other ``qrfarm/``. One that dies is
started again (not in a tight loop); one that fails at start-up the same way
(exit status and last words) ``FAILURES_TO_GIVE_UP`` times running stops them
all, with its error. When told to stop, each gets SIGTERM and time to finish
what it has in hand.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ..errors import ChildFailedAtStart

log = logging.getLogger(__name__)
CHECK_S = 2.0
RESTART_PAUSE_S = 5.0
# A child that ends sooner than this after its start failed at start-up.
STARTUP_S = 30.0
FAILURES_TO_GIVE_UP = 3
LAST_LINES = 6


def child_command(argv: list[str]) -> list[str]:
    """The command line of a qrfarm child process (also used to re-execute one)."""
    return [sys.executable, "-P", "-m", "qrfarm.cli", *argv]


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path | None = None
    pass_fds: tuple[int, ...] = ()  # descriptors the child inherits (a listening socket)
    process: subprocess.Popen[bytes] | None = None
    starts: list[float] = field(default_factory=list)
    # The last lines it wrote, of this run: its error when it fails.
    last_lines: deque[str] = field(default_factory=lambda: deque(maxlen=LAST_LINES))
    # (exit status, last words) of each start-up failure in a row.
    failures: list[tuple[int, str]] = field(default_factory=list)
    _log_offset: int = 0
    _relay_thread: threading.Thread | None = None

    def start(self) -> None:
        self.last_lines.clear()
        if self.log_path is None:
            self.process = subprocess.Popen(
                child_command(self.argv), stderr=subprocess.PIPE, pass_fds=self.pass_fds
            )
            assert self.process.stderr is not None
            self._relay_thread = threading.Thread(
                target=self._relay, args=(self.process.stderr,), daemon=True
            )
            self._relay_thread.start()
        else:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("ab") as log_file:
                self._log_offset = log_file.tell()
                self.process = subprocess.Popen(
                    child_command(["-v", *self.argv]),
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    pass_fds=self.pass_fds,
                )
        self.starts.append(time.monotonic())
        log.info("started %s (pid %d)", self.name, self.process.pid)

    def _relay(self, stream: IO[bytes]) -> None:
        """Pass its stderr on, keeping the last lines."""
        for raw in stream:
            sys.stderr.buffer.write(raw)
            sys.stderr.buffer.flush()
            line = raw.decode(errors="replace").rstrip()
            if line.strip():
                self.last_lines.append(line)

    def error_text(self) -> str:
        """The last lines this run wrote (from its log file when it has one)."""
        if self.log_path is not None and self.log_path.exists():
            with self.log_path.open("rb") as log_file:
                log_file.seek(self._log_offset)
                text = log_file.read().decode(errors="replace")
            return "\n".join([ln for ln in text.splitlines() if ln.strip()][-LAST_LINES:])
        return "\n".join(self.last_lines)

    def ended(self) -> None:
        """Note how it ended; raises when it failed at start-up the same way too often."""
        assert self.process is not None
        code = self.process.wait()
        lived = time.monotonic() - self.starts[-1]
        if lived >= STARTUP_S:
            self.failures.clear()
            return
        if self._relay_thread is not None:
            self._relay_thread.join(2.0)  # its last lines
        text = self.error_text()
        last = text.splitlines()[-1] if text else ""
        if self.failures and self.failures[-1] != (code, last):
            self.failures.clear()
        self.failures.append((code, last))
        if len(self.failures) >= FAILURES_TO_GIVE_UP:
            raise ChildFailedAtStart(
                f"{self.name} failed at start-up {len(self.failures)} times the same way"
                f" (exit status {code}):\n{text}"
            )

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
                    child.ended()
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
