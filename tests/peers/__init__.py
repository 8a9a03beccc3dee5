"""Real DICOM peers (Orthanc, DCMTK) started as child processes for tests.

Every peer listens on 127.0.0.1 only as far as the tests are concerned: the
tests connect to nothing else, whatever interface the peer binds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from tests.peers.ports import LOCALHOST, wait_for_port

__all__ = [
    "LOCALHOST",
    "PacsPeer",
    "PeerProcess",
    "PeerStartError",
    "dataset_bytes",
    "peer_env",
    "require_peer",
]


class PeerStartError(RuntimeError):
    """A peer did not come up; the message carries the end of its log."""


def require_peer(binary: str, *alternatives: str) -> str:
    """The first of the given executables that exists; skip (fail on CI) if none.

    Paths are absolute on purpose: pynetdicom installs commands named like
    DCMTK's (storescu, findscu, ...) into the virtual environment's PATH.
    """
    for candidate in (binary, *alternatives):
        if Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    message = f"peer binary not installed: {' or '.join((binary, *alternatives))}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def peer_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a peer process: Nagle off, as the benchmarks assume.

    DCMTK (3.6.2 and later) and Orthanc read TCP_NODELAY from the environment;
    without it each PDU written in two parts waits for a delayed ACK (~40 ms).
    """
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    env.update(extra or {})
    return env


class PeerProcess:
    """A peer running as a child process in its own process group, logging to a file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: Path,
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("ab")
        # A session of its own: stop() can then end the forked children too
        # (dcmqrscp forks one per association) without touching anything else.
        self.popen = subprocess.Popen(
            self.argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=peer_env(env),
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def failure(self, what: str) -> PeerStartError:
        status = "running" if self.running() else f"exited with {self.popen.returncode}"
        return PeerStartError(
            f"{self.name}: {what} ({status}; command: {' '.join(self.argv)})\n"
            f"--- last lines of {self.log_path} ---\n{self.log_tail()}"
        )

    def wait_until_listening(self, port: int, timeout: float) -> None:
        """Block until the peer accepts TCP connections on 127.0.0.1:port."""
        if not wait_for_port(port, timeout=timeout, still_running=self.running):
            raise self.failure(f"no connection accepted on {LOCALHOST}:{port} within {timeout} s")
        if not self.running():  # something else answered on the port
            raise self.failure(f"exited although {LOCALHOST}:{port} accepts connections")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after ``timeout``."""
        if self.running():
            self._signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.popen.wait(timeout)
        # Forked children may outlive their parent: end the rest of the group.
        self._signal_group(signal.SIGKILL)
        self._log.close()

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)  # our child's own group: pgid == pid


@dataclass(kw_only=True)
class PacsPeer:
    """What every PACS test peer offers: its address and what it stored."""

    name: str
    ae_title: str
    host: str = LOCALHOST
    port: int

    def stored_bytes(self, sop_uid: str) -> bytes:
        """The Part-10 file the PACS holds for this SOP Instance UID."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


def dataset_bytes(part10: bytes) -> bytes:
    """The encoded data set of a Part-10 file: what follows the File Meta group.

    Two files are "byte-equal" in the sense of the design notes when this is
    equal for both; preamble and File Meta Information may differ.
    """
    if part10[128:132] != b"DICM":
        raise ValueError("not a DICOM Part-10 file (no DICM prefix at offset 128)")
    offset = 132
    # File Meta is always Explicit VR Little Endian; walk its elements rather
    # than trust (0002,0000), which some writers leave out or get wrong.
    while offset + 8 <= len(part10):
        group, _element = struct.unpack_from("<HH", part10, offset)
        if group != 0x0002:
            break
        vr = part10[offset + 4 : offset + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV"):
            (length,) = struct.unpack_from("<I", part10, offset + 8)
            offset += 12 + length
        else:
            (length,) = struct.unpack_from("<H", part10, offset + 6)
            offset += 8 + length
    return part10[offset:]
