"""Behind a proxy on the TLS port: the PROXY header, then TLS, even when the
proxy sends the header and the peer's first TLS bytes in one segment."""

from __future__ import annotations

import contextlib
import socket
import ssl
from pathlib import Path

from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context

from qrfarm.scp import StorageScp
from qrfarm.scp import tls as scp_tls
from qrfarm.scp.proxy_protocol import header
from qrfarm.storage import InstanceStorage
from tests.conftest import QRFARM_SCP_AE
from tests.peers.certs import TestCa

from .conftest import Db

VERIFICATION = "1.2.840.10008.1.1"


def associate_rq(calling_ae: str) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling_ae
    primitive.called_ae_title = QRFARM_SCP_AE
    context = build_context(VERIFICATION)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    primitive.user_information = [length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


class TlsOverSocket:
    """A TLS client over a plain socket, through memory BIOs: the caller
    decides what goes out in which segment."""

    def __init__(self, sock: socket.socket, ca: Path) -> None:
        context = ssl.create_default_context(cafile=str(ca))
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="127.0.0.1")

    def first_bytes(self) -> bytes:
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.do_handshake()
        return self.outgoing.read()

    def finish_handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                self.sock.sendall(self.outgoing.read())
                return
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                self.incoming.write(self.sock.recv(65536))

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self.sock.sendall(self.outgoing.read())

    def receive(self) -> bytes:
        while True:
            try:
                return self.tls.read(65536)
            except ssl.SSLWantReadError:
                chunk = self.sock.recv(65536)
                assert chunk, "the SCP closed the connection"
                self.incoming.write(chunk)


def test_the_proxy_header_and_the_first_tls_bytes_in_one_segment(
    db: Db, storage_root: Path, tmp_path: Path
) -> None:
    ca = TestCa(tmp_path / "ca")
    leaf = ca.issue("scp")
    scp = StorageScp(
        db.sessions,
        InstanceStorage(storage_root),
        ae_title=QRFARM_SCP_AE,
        port=0,
        tls_port=0,
        tls_context=scp_tls.server_context(leaf.cert, leaf.key),
        proxy_protocol_from=["127.0.0.1"],
    )
    scp.start()
    try:
        assert scp.tls_port is not None
        with socket.create_connection(("127.0.0.1", scp.tls_port), timeout=30) as sock:
            client = TlsOverSocket(sock, ca.cert_file)
            # The PACS behind the proxy is a known node's host; the proxy is not.
            proxied = header(("127.0.0.1", 40000), ("127.0.0.1", scp.tls_port))
            sock.sendall(proxied + client.first_bytes())
            client.finish_handshake()
            client.send(associate_rq("STORESCU"))
            answer = client.receive()
        assert answer[0] == 0x02, f"not an A-ASSOCIATE-AC: {answer[:10]!r}"
    finally:
        scp.stop(drain_timeout=5)
