"""WADO-RS answers no archive should send, from a test service of our own on
127.0.0.1: each is refused naming what is wrong, nothing of it is left in
the spool folder, and no part is ever held whole in memory."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import urllib3

from qrfarm.dicomweb import WebService, WebTimeouts, open_client, wado
from qrfarm.dicomweb.service import http_error
from qrfarm.errors import DatasetTruncated, DicomWebError, DicomWebResponseError
from qrfarm.sandbox.synthetic import Corpus

BOUNDARY = "b0undary-1234"


class _Answer(http.server.BaseHTTPRequestHandler):
    """Answers every GET with ``body`` under ``content_type``, written in
    ``chunk``-byte writes (so that boundaries fall across reads)."""

    content_type: ClassVar[str] = ""
    body: ClassVar[bytes] = b""
    chunk: ClassVar[int] = 7
    pause_s: ClassVar[float] = 0.0  # between two writes: a slow service
    cut_short: ClassVar[threading.Event]  # the client closed before the end

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        try:
            for start in range(0, len(self.body), self.chunk):
                self.wfile.write(self.body[start : start + self.chunk])
                if self.pause_s:
                    self.wfile.flush()
                    time.sleep(self.pause_s)
        except OSError:
            self.cut_short.set()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def service() -> Iterator[type[_Answer]]:
    handler = type("Handler", (_Answer,), {"cut_short": threading.Event()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


def multipart(*parts: bytes, part_type: bytes = b"application/dicom") -> bytes:
    body = b"preamble to ignore\r\n"
    for part in parts:
        body += b"--" + BOUNDARY.encode() + b"\r\nContent-Type: " + part_type + b"\r\n\r\n"
        body += part + b"\r\n"
    return body + b"--" + BOUNDARY.encode() + b"--\r\n"


def fetch(
    service: type[_Answer],
    spool: Path,
    max_part_bytes: int = 1 << 20,
    deadline: float | None = None,
) -> list[Path]:
    spool.mkdir(exist_ok=True)
    url = service.url  # type: ignore[attr-defined]
    with open_client(WebService(url), WebTimeouts(connect_s=2, read_s=5)) as web:
        parts = wado.retrieve(
            web,
            wado.Resource("1.2.3"),
            spool,
            max_part_bytes=max_part_bytes,
            deadline=deadline,
        )
        return [part.path for part in parts]


MULTIPART = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'


def test_parts_split_across_reads_come_out_whole_and_byte_equal(
    service: type[_Answer], corpus: Corpus, tmp_path: Path
) -> None:
    files = [i.path.read_bytes() for i in corpus.instances[:3]]
    # A part whose bytes hold a near-boundary ("\r\n--b0undary" without the rest).
    files.append(files[0] + b"\r\n--" + BOUNDARY[:-1].encode())
    service.content_type, service.body = MULTIPART, multipart(*files)
    paths = fetch(service, tmp_path / "spool")
    assert [p.read_bytes() for p in paths] == files
    header = wado.read_part(paths[0])
    assert header.sop_instance_uid == corpus.instances[0].sop_uid


@pytest.mark.parametrize(
    ("content_type", "body", "why"),
    [
        (MULTIPART, multipart(b"x" * 5000), "exceeds 4096 bytes"),
        (MULTIPART, multipart(b"DICM" * 100)[:-40], "ends inside a part"),
        ("text/html", b"<html>login</html>", "not multipart/related"),
        (MULTIPART, multipart(b"{}", part_type=b"application/json"), "application/json"),
        (MULTIPART, b"--" + BOUNDARY.encode() + b"\r\n" + b"X" * 20000, "headers exceed"),
        (MULTIPART, b"no boundary anywhere" * 10, "no multipart boundary"),
    ],
    ids=[
        "part-too-large",
        "cut-short",
        "not-multipart",
        "not-dicom",
        "endless-headers",
        "no-boundary",
    ],
)
def test_a_hostile_answer_is_refused_and_leaves_nothing_behind(
    service: type[_Answer], tmp_path: Path, content_type: str, body: bytes, why: str
) -> None:
    service.content_type, service.body = content_type, body
    with pytest.raises(DicomWebResponseError, match=why):
        fetch(service, tmp_path / "spool", max_part_bytes=4096)
    assert list((tmp_path / "spool").iterdir()) == []


def test_a_part_cut_short_inside_its_data_set_is_not_taken_for_whole(
    service: type[_Answer], corpus: Corpus, tmp_path: Path
) -> None:
    whole = corpus.instances[0].path.read_bytes()
    service.content_type, service.body = MULTIPART, multipart(whole[: len(whole) - 100])
    (path,) = fetch(service, tmp_path / "spool")
    with pytest.raises(DatasetTruncated):
        wado.read_part(path)


def test_a_service_trickling_its_answer_is_cut_at_the_deadline(
    service: type[_Answer], corpus: Corpus, tmp_path: Path
) -> None:
    """Each read brings a few bytes, so no read times out: the retrieve's
    deadline must still end it, while the service is still sending (a read
    that waits for a large block would let it run on to its end)."""
    whole = corpus.instances[0].path.read_bytes()
    service.content_type, service.body = MULTIPART, multipart(whole, whole)
    service.chunk, service.pause_s = 16, 0.02
    with pytest.raises(DicomWebResponseError, match="within its deadline"):
        fetch(service, tmp_path / "spool", deadline=time.monotonic() + 0.5)
    assert service.cut_short.wait(10), "the answer was read to its end"
    assert list((tmp_path / "spool").iterdir()) == []


@pytest.mark.parametrize(
    ("error", "retriable"),
    [
        (urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out"), True),  # type: ignore[arg-type]
        (urllib3.exceptions.ProtocolError("connection broken"), True),
        (urllib3.exceptions.SSLError("bad record mac"), True),
        (urllib3.exceptions.DecodeError("not gzip"), False),
    ],
    ids=["timeout", "broken", "tls", "undecodable"],
)
def test_a_body_read_that_fails_is_a_dicomweb_error_retriable_where_it_may_pass(
    error: Exception, retriable: bool
) -> None:
    """What urllib3 raises while a WADO-RS body is read off the stream: a
    DicomWebError naming the request, retriable for what may pass next time."""
    mapped = http_error(error, "WADO-RS 1.2.3")
    assert isinstance(mapped, DicomWebError)
    assert "WADO-RS 1.2.3" in str(mapped)
    assert mapped.retriable is retriable
