"""A STOW-RS, QIDO-RS and WADO-RS service of our own on 127.0.0.1, for what
no real peer does on demand: it refuses chosen SOP Instance UIDs (Failed SOP
Sequence with a chosen Failure Reason, a 409 answer), or says it stored
chosen ones and forgets them, and answers QIDO-RS with exactly what it
stored. It records the UIDs of every STOW-RS request.
It serves ``served`` files as a study (an IMAGE-level QIDO-RS search, a
study's WADO-RS), sending parts from ``trickle_from`` on a few bytes at a
time, as a slow archive does.

A hostile one, on demand: its IMAGE-level search at /instances also names
``foreign`` files (it ignores the filters), every QIDO-RS answer is padded
to ``pad_qido`` rows whatever the offset (it ignores offset), and a Failure
Reason is sent with ``reason_values`` (several values where one belongs)."""

from __future__ import annotations

import http.server
import json
import threading
import time
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pydicom import dcmread


@dataclass
class FakeDicomWeb:
    refuse: dict[str, int] = field(default_factory=dict)  # SOP UID -> Failure Reason
    # Answered as stored by STOW-RS, yet never kept (QIDO-RS does not find them).
    forget: set[str] = field(default_factory=set)
    stored: dict[str, tuple[str, str]] = field(default_factory=dict)  # SOP -> (study, series)
    requests: list[list[str]] = field(default_factory=list)  # SOP UIDs of each STOW-RS
    paths: list[str] = field(default_factory=list)  # the path of each STOW-RS
    served: list[bytes] = field(default_factory=list)  # files of one study, for WADO-RS
    trickle_from: int | None = None  # the first served part sent slowly
    # The client closed a WADO-RS answer before its end.
    cut_short: threading.Event = field(default_factory=threading.Event)
    foreign: list[bytes] = field(default_factory=list)
    pad_qido: int = 0
    # Its stored check answers every instance of the study, paged by limit and
    # offset, whatever SOP Instance UIDs were asked for.
    ignore_uid_filter: bool = False
    reason_values: list[int] | None = None
    # The HTTP status its stored check (a QIDO-RS search in a study) answers with.
    check_status: int = 200
    searches: int = 0  # QIDO-RS requests answered
    wado_paths: list[str] = field(default_factory=list)  # the path of each WADO-RS
    port: int = 0
    _server: http.server.ThreadingHTTPServer | None = None
    _closing: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def start(self) -> FakeDicomWeb:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else _read_chunked(self.rfile)
                boundary = self.headers["Content-Type"].split("boundary=")[1].split(";")[0]
                referenced: list[dict[str, Any]] = []
                failed: list[dict[str, Any]] = []
                sent: list[str] = []
                for part in body.split(b"--" + boundary.strip('"').encode())[1:]:
                    if part.startswith(b"--"):
                        break
                    data = part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
                    ds = dcmread(BytesIO(data))
                    uid = str(ds.SOPInstanceUID)
                    sent.append(uid)
                    item: dict[str, dict[str, Any]] = {
                        "00081150": {"vr": "UI", "Value": [str(ds.SOPClassUID)]},
                        "00081155": {"vr": "UI", "Value": [uid]},
                    }
                    if uid in fake.refuse:
                        reasons = fake.reason_values or [fake.refuse[uid]]
                        item["00081197"] = {"vr": "US", "Value": reasons}
                        failed.append(item)
                    else:
                        if uid not in fake.forget:
                            fake.stored[uid] = (
                                str(ds.StudyInstanceUID),
                                str(ds.SeriesInstanceUID),
                            )
                        referenced.append(item)
                fake.requests.append(sent)
                fake.paths.append(urlsplit(self.path).path)
                answer = {
                    "00081198": {"vr": "SQ", "Value": failed},
                    "00081199": {"vr": "SQ", "Value": referenced},
                }
                self._json(409 if failed else 200, answer)

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                if parts.path.endswith("/dicom-web/instances"):
                    named = [_reference(data) for data in [*fake.served, *fake.foreign]]
                    self._qido(named)
                    return
                if parts.path.endswith("/dicom-web/studies"):
                    self._qido([])  # it holds no study of its own to name
                    return
                if "/studies/" in parts.path and not parts.path.endswith("/instances"):
                    fake.wado_paths.append(parts.path)
                    self._wado()
                    return
                if fake.check_status != 200:
                    self._json(fake.check_status, [])
                    return
                wanted = set(",".join(query.get("SOPInstanceUID", [""])).split(","))
                study = parts.path.split("/studies/")[1].split("/")[0]
                found = [
                    {"00080018": {"vr": "UI", "Value": [uid]}}
                    for uid, (of_study, _) in sorted(fake.stored.items())
                    if (fake.ignore_uid_filter or uid in wanted) and of_study == study
                ]
                if fake.ignore_uid_filter:
                    offset = int(query.get("offset", ["0"])[0])
                    found = found[offset : offset + int(query.get("limit", ["500"])[0])]
                self._qido(found)

            def _qido(self, answers: list[dict[str, Any]]) -> None:
                fake.searches += 1
                junk = {"00080018": {"vr": "UI", "Value": ["1.2.826.0.1.3680043.10.1234.77"]}}
                self._json(200, answers + [junk] * max(0, fake.pad_qido - len(answers)))

            def _wado(self) -> None:
                boundary = b"fake-boundary"
                self.send_response(200)
                self.send_header(
                    "Content-Type",
                    'multipart/related; type="application/dicom"; boundary=fake-boundary',
                )
                self.end_headers()
                try:
                    for n, data in enumerate(fake.served):
                        part = b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n"
                        part += data + b"\r\n"
                        if fake.trickle_from is not None and n >= fake.trickle_from:
                            self._trickle(part)
                        else:
                            self.wfile.write(part)
                    self.wfile.write(b"--" + boundary + b"--\r\n")
                except OSError:
                    fake.cut_short.set()

            def _trickle(self, data: bytes) -> None:
                for start in range(0, len(data), 16):
                    if fake._closing.is_set():
                        raise ConnectionAbortedError("the service is stopping")
                    self.wfile.write(data[start : start + 16])
                    self.wfile.flush()
                    time.sleep(0.05)

            def _json(self, status: int, document: Any) -> None:
                data = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _read_chunked(stream: Any) -> bytes:
    body = b""
    while True:
        size = int(stream.readline().strip(), 16)
        if size == 0:
            stream.readline()
            return body
        body += stream.read(size)
        stream.readline()


def _reference(data: bytes) -> dict[str, Any]:
    """An IMAGE-level QIDO-RS answer naming a served file (and its patient)."""
    ds = dcmread(BytesIO(data), stop_before_pixels=True)
    answer = {
        tag: {"vr": "UI", "Value": [str(ds[keyword].value)]}
        for tag, keyword in (
            ("0020000D", "StudyInstanceUID"),
            ("0020000E", "SeriesInstanceUID"),
            ("00080018", "SOPInstanceUID"),
            ("00080016", "SOPClassUID"),
        )
    }
    answer["00100020"] = {"vr": "LO", "Value": [str(ds.PatientID)]}
    return answer
