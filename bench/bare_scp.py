"""A bare pynetdicom storage SCP: writes the bytes it receives to a file, nothing else.

The reference for what a pynetdicom-based receiver costs before any work of
its own: no decoding of the data set, no checks, no fsync, no database. Run
as its own process by ``store_bench.py``::

    python bench/bare_scp.py --port 11112 --out DIR [--nodelay] [--quickack] [--max-pdu 0]

Each instance becomes ``DIR/<SOP Instance UID>.dcm`` (the Part-10 file of
``event.encoded_dataset()``). SIGTERM or SIGINT ends it.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from contextlib import suppress
from pathlib import Path
from types import FrameType
from typing import Any

from pynetdicom import AE, AllStoragePresentationContexts, evt, transport
from pynetdicom import _config as pynetdicom_config
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]


def handle_store(event: Event, out: Path) -> int:
    request = event.request
    assert isinstance(request, C_STORE)
    sop_uid = str(request.AffectedSOPInstanceUID)
    (out / f"{sop_uid}.dcm").write_bytes(event.encoded_dataset())
    return 0x0000


def handle_open_nodelay(event: Event) -> None:
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        with suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def enable_quickack() -> None:
    """Re-arm TCP_QUICKACK around every read of an association socket (Linux).

    A sender with Nagle on (DCMTK as packaged) writes a PDU header, then its
    body, and holds the body until the header is acknowledged; a receiver in
    delayed-ACK mode acknowledges ~40 ms later. Quick-ack mode is not sticky
    (the kernel drops it on its own), hence re-armed on every read.
    """
    original = transport.AssociationSocket.recv

    def rearm(assoc_socket: transport.AssociationSocket) -> None:
        if assoc_socket.socket is not None:
            with suppress(OSError):
                assoc_socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)

    def recv(self: transport.AssociationSocket, nr_bytes: int) -> bytearray:
        rearm(self)
        data = original(self, nr_bytes)
        rearm(self)
        return data

    transport.AssociationSocket.recv = recv  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--aet", default="BARESCP")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--nodelay", action="store_true", help="set TCP_NODELAY on each socket")
    parser.add_argument(
        "--quickack", action="store_true", help="re-arm TCP_QUICKACK on every read (Linux)"
    )
    parser.add_argument(
        "--max-pdu", type=int, default=0, help="maximum PDU length we accept (0: unlimited)"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    if args.quickack:
        enable_quickack()
    pynetdicom_config.UNRESTRICTED_STORAGE_SERVICE = True
    ae = AE(ae_title=args.aet)
    ae.maximum_pdu_size = args.max_pdu
    ae.maximum_associations = 16
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax)
    handlers: list[Any] = [(evt.EVT_C_STORE, handle_store, [args.out])]
    if args.nodelay:
        handlers.append((evt.EVT_CONN_OPEN, handle_open_nodelay))
    server = ae.start_server((args.host, args.port), block=False, evt_handlers=handlers)
    assert server is not None

    def stop(_signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        signal.pause()
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
