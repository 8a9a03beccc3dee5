"""Free TCP ports on 127.0.0.1 for the peers a test starts, and waiting for them."""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

LOCALHOST = "127.0.0.1"

_lock = threading.Lock()
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    """Lowest port the kernel hands to outgoing connections."""
    try:
        low, _high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low)
    except (OSError, ValueError):
        return 32768


def _can_bind(port: int, *, reuse_address: bool = False) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOCALHOST, port))
        except OSError:
            return False
    return True


def nothing_listens(port: int) -> bool:
    """Whether a peer binding with SO_REUSEADDR (as DCMTK and Orthanc do) could
    listen on this port now: no listener there, TIME_WAIT leftovers allowed."""
    return _can_bind(port, reuse_address=True)


def _worker_range() -> tuple[int, int]:
    """The ports this test process picks from: below the ephemeral range, and
    under pytest-xdist a slice of its own per worker (gw0, gw1, ...), so that
    a port one worker has handed out and left free for a while (a database
    stopped and started again) is never picked by another."""
    high = _ephemeral_low() - 1
    low = 15000 if high > 16000 else 1025
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if worker.startswith("gw") and worker[2:].isdigit() and count > 1:
        size = (high - low + 1) // count
        low += int(worker[2:]) % count * size
        high = low + size - 1
    return low, high


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on and no earlier call returned.

    Chosen below the kernel's ephemeral range: a port from that range can be
    taken, between this call and the bind of the peer, by the local end of an
    outgoing connection (a PACS connecting to a move destination, say).
    """
    low, high = _worker_range()
    with _lock:
        for _ in range(500):
            port = random.randint(low, high)
            # Without SO_REUSEADDR: a port with connections still in TIME_WAIT
            # is passed over too.
            if port not in _handed_out and _can_bind(port):
                _handed_out.add(port)
                return port
    raise RuntimeError(f"no free TCP port found on {LOCALHOST} in {low}-{high}")


def accepts_connections(port: int, host: str = LOCALHOST) -> bool:
    """Whether something accepts a TCP connection on host:port right now."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def wait_for_port(
    port: int,
    *,
    host: str = LOCALHOST,
    timeout: float = 30.0,
    still_running: Callable[[], bool] = lambda: True,
) -> bool:
    """Wait until host:port accepts connections; False on timeout or early exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if accepts_connections(port, host):
            return True
        if not still_running():
            return False
        time.sleep(0.05)
    return False
