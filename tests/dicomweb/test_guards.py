"""Where a DICOMweb URL may lead: refused before any connection when its
scheme, its form or the outbound allow-list says no, or when the service
redirects to another origin."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qrfarm.client import Client
from qrfarm.config import Settings
from qrfarm.dicom import Level, Timeouts
from qrfarm.dicomweb import WebService, WebTimeouts, check_base_url, open_client
from qrfarm.dicomweb.qido import search
from qrfarm.errors import DicomWebRedirectRefused, InvalidNode, TargetNotAllowed
from qrfarm.jobs.nodes import NodeSpec, upsert_node
from qrfarm.jobs.runner import run_job
from qrfarm.models import make_engine, upgrade
from qrfarm.workers.permits import FilePermits
from qrfarm.workers.pool import AssociationPool
from qrfarm.workers.process import runner_deps
from tests.jobs.conftest import Sent


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("ftp://127.0.0.1/dicom-web", "the scheme must be http or https"),
        ("file:///etc/passwd", "the scheme must be http or https"),
        ("gopher://127.0.0.1:70/", "the scheme must be http or https"),
        ("http://user:secret@127.0.0.1/dicom-web", "credentials in the URL are not accepted"),
        ("http:///dicom-web", "names no host"),
        ("http://127.0.0.1/dicom-web?x=1", "no query or fragment"),
        ("http://127.0.0.1:99999/dicom-web", "not a valid URL"),
        ("http://127.0.0.1/dicom web", "white space"),
        ("http://127.0.0.1/" + "a" * 2100, "longer than 2048"),
    ],
)
def test_a_url_that_cannot_be_a_dicomweb_base_is_refused_naming_the_rule(
    url: str, rule: str
) -> None:
    with pytest.raises(InvalidNode, match=rule) as refused:
        check_base_url(url)
    assert "secret" not in str(refused.value)


def test_auth_settings_are_checked_and_the_secret_never_shown(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cr3t-token\n")
    with pytest.raises(InvalidNode, match="basic auth needs a user name"):
        WebService("http://127.0.0.1/dicom-web", "basic", None, secret)
    with pytest.raises(InvalidNode, match="needs a secret file"):
        WebService("http://127.0.0.1/dicom-web", "bearer")
    with pytest.raises(InvalidNode, match="must be one of"):
        WebService("http://127.0.0.1/dicom-web", "digest")  # type: ignore[arg-type]
    service = WebService("http://127.0.0.1/dicom-web", "bearer", None, secret)
    with open_client(service, WebTimeouts()) as web:
        assert "s3cr3t" not in repr(web.session.auth)
    assert "s3cr3t" not in repr(service)


class _Connections:
    """Every outbound connection attempted while installed, refused unless to 127.0.0.1."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.attempts: list[Any] = []
        real = socket.socket.connect

        def connect(sock: socket.socket, address: Any) -> None:
            self.attempts.append(address)
            if not (isinstance(address, tuple) and address[0] == "127.0.0.1"):
                raise OSError("test: connection outside 127.0.0.1 refused")
            real(sock, address)

        monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[tuple[Client, Any]]:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'q.db'}",
        storage_root=tmp_path / "storage",
        data_dir=tmp_path / "data",
        allowed_hosts=["127.0.0.1"],
    )
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    client = Client(settings, engine, Sent())
    pool = AssociationPool(FilePermits(settings.data_dir / "permits"), "QRFARM", Timeouts())
    try:
        yield client, runner_deps(settings, client.sessions, pool, Sent())
    finally:
        pool.close()
        engine.dispose()


def _web_node(client: Client, name: str, url: str) -> None:
    with client.sessions() as session, session.begin():
        upsert_node(
            session,
            NodeSpec(
                name, "WEB", "127.0.0.1", 8042, dicomweb_url=url, retrieve_transport="dicomweb"
            ),
        )


def test_a_url_outside_the_allow_list_is_refused_without_any_connection(
    farm: tuple[Client, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, deps = farm
    # Registered before the allow-list was narrowed (or by hand in the database).
    _web_node(client, "elsewhere", "http://127.0.0.2:8042/dicom-web")
    connections = _Connections(monkeypatch)
    with pytest.raises(TargetNotAllowed, match=r"127\.0\.0\.2"):
        client.find("elsewhere", Level.STUDY, {"PatientID": "P*"})
    # A job queued under a wider allow-list is refused by the worker's.
    job_id = _queued_under_any_allow_list(client, "elsewhere")
    run_job(deps, job_id, "guard-test")
    status = client.status(job_id)
    assert status["state"] == "failed"
    assert "not in the outbound allow-list" in status["error"]
    assert connections.attempts == []


def _queued_under_any_allow_list(client: Client, node: str) -> int:
    wide = Client(
        client.settings.model_copy(update={"allowed_hosts": ["*"]}), client.engine, Sent()
    )
    return wide.find(node, Level.STUDY, {"PatientID": "P*"})


class _Redirector(http.server.BaseHTTPRequestHandler):
    location = ""

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def redirector() -> Iterator[tuple[str, socket.socket]]:
    """A service on 127.0.0.1 redirecting every request to another port of
    127.0.0.1, where a listening socket would see any connection."""
    target = socket.socket()
    target.bind(("127.0.0.1", 0))
    target.listen(4)
    target.setblocking(False)
    location = f"http://127.0.0.1:{target.getsockname()[1]}/dicom-web/studies"
    handler = type("Handler", (_Redirector,), {"location": location})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web", target
    finally:
        server.shutdown()
        server.server_close()
        target.close()


def test_a_redirect_to_another_origin_is_not_followed(
    farm: tuple[Client, Any], redirector: tuple[str, socket.socket]
) -> None:
    url, target = redirector
    from qrfarm.dicom import Root, build_query_identifier

    with (
        open_client(WebService(url), WebTimeouts(connect_s=2, read_s=5)) as web,
        pytest.raises(DicomWebRedirectRefused, match="another origin"),
    ):
        search(
            web, build_query_identifier(Root.STUDY, Level.STUDY, {"PatientID": "P*"}), Root.STUDY
        )
    client, deps = farm
    _web_node(client, "redirecting", url)
    job_id = client.find("redirecting", Level.STUDY, {"PatientID": "P*"})
    run_job(deps, job_id, "guard-test")
    status = client.status(job_id)
    assert status["state"] == "failed"  # permanent: not retried
    assert "redirected to http://127.0.0.1:" in status["error"]
    with pytest.raises(BlockingIOError):
        target.accept()  # nobody came


class _Huge(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(200 << 20))
        self.end_headers()
        self.wfile.write(b"[")

    def log_message(self, *args: Any) -> None:
        pass


def test_a_qido_answer_announcing_more_than_the_limit_is_not_read() -> None:
    from qrfarm.dicom import Root, build_query_identifier
    from qrfarm.errors import DicomWebResponseError

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Huge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    try:
        with (
            open_client(WebService(url), WebTimeouts(connect_s=2, read_s=5)) as web,
            pytest.raises(DicomWebResponseError, match="over 67108864"),
        ):
            search(
                web,
                build_query_identifier(Root.STUDY, Level.STUDY, {"PatientID": "P*"}),
                Root.STUDY,
            )
    finally:
        server.shutdown()
        server.server_close()


class _HugeChunked(http.server.BaseHTTPRequestHandler):
    """An answer with no Content-Length: chunked, past the limit (lowered by the test)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        piece = b"[" + b" " * 4094 + b"]"
        try:
            for _ in range(64):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the client stopped reading: what the test wants

    def log_message(self, *args: Any) -> None:
        pass


def test_a_chunked_qido_answer_is_read_no_further_than_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from qrfarm.dicom import Root, build_query_identifier
    from qrfarm.dicomweb import service
    from qrfarm.errors import DicomWebResponseError

    monkeypatch.setattr(service, "MAX_JSON_BYTES", 16 << 10)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HugeChunked)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    try:
        with (
            open_client(WebService(url), WebTimeouts(connect_s=2, read_s=5)) as web,
            pytest.raises(DicomWebResponseError, match="longer than 16384 bytes"),
        ):
            search(
                web,
                build_query_identifier(Root.STUDY, Level.STUDY, {"PatientID": "P*"}),
                Root.STUDY,
            )
    finally:
        server.shutdown()
        server.server_close()
