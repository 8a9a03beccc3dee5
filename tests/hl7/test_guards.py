"""The HL7 listener's door, against ``qrfarm hl7`` as its own process on loopback.

Shown: 100 connections that send nothing are all closed once the idle
timeout passes, and a new sender is then served; a source outside the
allow-list (127.0.0.2, with 127.0.0.1/32 allowed) is closed without an
answer and starts nothing, while 127.0.0.1 is acknowledged; a connection
past the cap per source, or past the cap in all, is closed at once, and a
slot freed is taken again; over MLLP/TLS an order is acknowledged (the
sender's client certificate verified against the CA set), and a sender
without a certificate, or speaking plain MLLP to the TLS port, gets nothing.
"""

from __future__ import annotations

import datetime
import ipaddress
import select
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hl7
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from qrfarm.models import Prefetch
from tests.peers.ports import LOCALHOST

from .test_listener import (
    SIU_WITHOUT_RULE,
    Listener,
    count,
    listener_process,
    mllp,
    msa,
    orm,
    prefetches_of,
)

OTHER_SOURCE = "127.0.0.2"  # also loopback: a second sender address on this machine
ANSWER_TIMEOUT_S = 30.0
# Only a bound on a failing test's wait, not a measure: the timeout set is 1 s.
CLOSE_WAIT_S = 60.0
IDLE_CONNECTIONS = 100


def connect(listener: Listener, source: str = LOCALHOST) -> socket.socket:
    sock = socket.create_connection(
        (LOCALHOST, listener.port), timeout=ANSWER_TIMEOUT_S, source_address=(source, 0)
    )
    return sock


def ask(sock: socket.socket, text: str) -> hl7.Message:
    """Send one message and read its acknowledgement."""
    sock.sendall(mllp(text))
    answer = b""
    while not answer.endswith(b"\x1c\r"):
        chunk = sock.recv(4096)
        assert chunk, f"connection closed without an acknowledgement: {answer!r}"
        answer += chunk
    return hl7.parse(answer[1:-2].decode())


def closed_unanswered(sock: socket.socket, text: str | None = None) -> bool:
    """Whether the listener ends this connection without a byte of answer
    (after ``text`` is sent, when given)."""
    try:
        if text is not None:
            sock.sendall(mllp(text))
        return sock.recv(4096) == b""
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
        return True


# --- idle timeout ------------------------------------------------------------


def test_100_idle_connections_are_closed_after_the_idle_timeout_and_a_new_sender_is_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QRFARM_HL7_IDLE_TIMEOUT_S", "1")
    monkeypatch.setenv("QRFARM_HL7_MAX_CONNECTIONS", "200")
    monkeypatch.setenv("QRFARM_HL7_MAX_CONNECTIONS_PER_SOURCE", "200")
    with listener_process(tmp_path) as listener:
        idle = [connect(listener) for _ in range(IDLE_CONNECTIONS)]
        try:
            open_ = {sock.fileno(): sock for sock in idle}
            deadline = time.monotonic() + CLOSE_WAIT_S
            while open_ and time.monotonic() < deadline:
                readable, _, _ = select.select(list(open_.values()), [], [], 1.0)
                for sock in readable:
                    assert closed_unanswered(sock)
                    del open_[sock.fileno()]
            assert not open_, f"{len(open_)} idle connections still open:\n{listener.log_text()}"
        finally:
            for sock in idle:
                sock.close()
        with connect(listener) as sender:
            assert msa(ask(sender, orm("ORD-8001", "PAT-8001", "ACC-8001")))[:2] == (
                "AA",
                "ORD-8001",
            )
        assert "idle" in listener.log_text()


# --- allow-list ----------------------------------------------------------------


def test_a_source_outside_the_allow_list_is_closed_unanswered_and_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QRFARM_HL7_ALLOWED_SOURCES", "127.0.0.1/32")
    with listener_process(tmp_path) as listener:
        with connect(listener, OTHER_SOURCE) as stranger:
            assert closed_unanswered(stranger, orm("ORD-8101", "PAT-8101", "ACC-8101"))
        assert prefetches_of(listener, "PAT-8101") == []
        assert count(listener, Prefetch) == 0
        assert f"HL7 connection from {OTHER_SOURCE} refused" in listener.log_text()
        with connect(listener) as allowed:
            ack = ask(allowed, orm("ORD-8101", "PAT-8101", "ACC-8101"))
        assert msa(ack)[:2] == ("AA", "ORD-8101")
        assert len(prefetches_of(listener, "PAT-8101")) == 1


# --- connection caps -----------------------------------------------------------


def test_connections_past_the_caps_are_closed_at_once_and_a_freed_slot_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QRFARM_HL7_ALLOWED_SOURCES", f"{LOCALHOST},{OTHER_SOURCE}")
    monkeypatch.setenv("QRFARM_HL7_MAX_CONNECTIONS", "3")
    monkeypatch.setenv("QRFARM_HL7_MAX_CONNECTIONS_PER_SOURCE", "2")
    with listener_process(tmp_path) as listener:
        # Each answered, so each holds a slot now.
        first, second = served(listener), served(listener)
        with connect(listener) as third_from_one:
            assert closed_unanswered(third_from_one, SIU_WITHOUT_RULE)
        other = served(listener, OTHER_SOURCE)
        with connect(listener, OTHER_SOURCE) as fourth_in_all:
            assert closed_unanswered(fourth_in_all, SIU_WITHOUT_RULE)
        # One closed by its sender: its slot is free again.
        first.close()
        served(listener, OTHER_SOURCE).close()
        for sock in (second, other):
            sock.close()
        log = listener.log_text()
        assert "QRFARM_HL7_MAX_CONNECTIONS_PER_SOURCE" in log
        assert "QRFARM_HL7_MAX_CONNECTIONS)" in log


def served(listener: Listener, source: str = LOCALHOST) -> socket.socket:
    """A connection from ``source`` that the listener answers, left open.

    Tried again while refused: the listener frees the slot of a connection
    its sender closed (the port probe's, one closed by the test) on its own
    time, once it reads the end of it.
    """
    deadline = time.monotonic() + CLOSE_WAIT_S
    while True:
        sock = connect(listener, source)
        try:
            assert msa(ask(sock, SIU_WITHOUT_RULE))[0] == "AE"
        except (AssertionError, ConnectionResetError, BrokenPipeError):
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
        else:
            return sock


# --- MLLP over TLS -------------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOCALHOST))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A CA made here, a server certificate for 127.0.0.1 and a client certificate."""
    folder = tmp_path / "pki"
    folder.mkdir()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("qrfarm test CA", ca_key, _name("qrfarm test CA"), ca_key, ca=True)
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    paths = {}
    for role in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(f"qrfarm {role}", key, ca.subject, ca_key, server=role == "server")
        (folder / f"{role}.pem").write_bytes(cert.public_bytes(pem))
        paths[role] = (folder / f"{role}.pem", _write_key(key, folder / f"{role}.key"))
    return Pki(folder / "ca.pem", *paths["server"], *paths["client"])


@pytest.fixture
def tls_listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pki: Pki) -> Iterator[Listener]:
    monkeypatch.setenv("QRFARM_HL7_TLS_CERT_FILE", str(pki.server_cert))
    monkeypatch.setenv("QRFARM_HL7_TLS_KEY_FILE", str(pki.server_key))
    monkeypatch.setenv("QRFARM_HL7_TLS_CA_FILE", str(pki.ca))
    with listener_process(tmp_path) as listener:
        yield listener


def tls_connect(listener: Listener, pki: Pki, *, certificate: bool = True) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=pki.ca)
    if certificate:
        context.load_cert_chain(pki.client_cert, pki.client_key)
    return context.wrap_socket(connect(listener), server_hostname=LOCALHOST)


def test_an_order_over_mllp_tls_is_acknowledged(tls_listener: Listener, pki: Pki) -> None:
    with tls_connect(tls_listener, pki) as sender:
        assert sender.version() in ("TLSv1.2", "TLSv1.3")
        ack = ask(sender, orm("ORD-8201", "PAT-8201", "ACC-8201"))
    assert msa(ack)[:2] == ("AA", "ORD-8201")
    assert len(prefetches_of(tls_listener, "PAT-8201")) == 1


def test_mllp_tls_refuses_a_sender_without_a_client_certificate_and_plain_mllp(
    tls_listener: Listener, pki: Pki
) -> None:
    try:
        anonymous = tls_connect(tls_listener, pki, certificate=False)
    except (ssl.SSLError, ConnectionResetError):
        pass  # refused during the handshake (TLS 1.2)
    else:
        # TLS 1.3: the refusal arrives after the client's side of the handshake.
        with anonymous:
            assert closed_unanswered(anonymous, orm("ORD-8301", "PAT-8301", "ACC-8301"))
    with connect(tls_listener) as plain:
        assert closed_unanswered(plain, orm("ORD-8302", "PAT-8302", "ACC-8302"))
    assert count(tls_listener, Prefetch) == 0
    assert "TLS handshake failed" in tls_listener.log_text()
