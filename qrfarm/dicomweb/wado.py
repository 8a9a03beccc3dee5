"""WADO-RS: a study, series or instance retrieved as Part-10 files, each
written to disk as its bytes arrive.

dicomweb-client's retrieve methods keep each part of the multipart answer
whole in memory (a bytearray that grows until the next boundary, with no
limit) and hand it back parsed into a pydicom Dataset, so its file meta and
encoding are pydicom's, not what the archive holds. Here the request goes
out on the client's own guarded session, asking for every instance in the
transfer syntax it is stored in (``transfer-syntax=*``), and the answer is
split as it streams: about one read (256 KiB) and one part's headers
(at most 16 KiB) are held; each part's bytes go to a file in ``spool`` and
the part is handed on (path and size) before the next is read. A part over
``max_part_bytes`` stops the retrieve.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import requests
import urllib3
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_file_meta_info
from pydicom.uid import UID

from qrfarm.dicom.completeness import check_complete
from qrfarm.dicom.identifiers import is_valid_uid
from qrfarm.errors import DatasetTruncated, DicomWebResponseError

from .service import WebClient, http_error

ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
READ_BYTES = 256 << 10
MAX_PART_HEADERS = 16 << 10
_LAST_HEADER_TAG = 0x0020000E  # Series Instance UID: every UID needed is at or before it


@dataclass(frozen=True)
class Resource:
    """What one WADO-RS request asks for: a study, a series, or an instance."""

    study: str
    series: str | None = None
    instance: str | None = None

    def __post_init__(self) -> None:
        for what, uid in (
            ("study", self.study),
            ("series", self.series),
            ("instance", self.instance),
        ):
            if uid is not None and not is_valid_uid(uid):
                raise DicomWebResponseError(f"WADO-RS {what} UID {uid!r} is not a valid UID")
        if self.instance is not None and self.series is None:
            raise DicomWebResponseError("WADO-RS: an instance is retrieved within its series")

    def path(self) -> str:
        path = f"/studies/{self.study}"
        if self.series is not None:
            path += f"/series/{self.series}"
        if self.instance is not None:
            path += f"/instances/{self.instance}"
        return path

    def holds(self, study: str, series: str, instance: str) -> bool:
        """Whether an instance lies inside what was asked for."""
        return (
            study == self.study
            and (self.series is None or series == self.series)
            and (self.instance is None or instance == self.instance)
        )

    def __str__(self) -> str:
        return self.path()


@dataclass(frozen=True)
class Part:
    """One instance of a WADO-RS answer, in a file of ``spool`` the receiver
    now owns (it moves or removes it)."""

    path: Path
    size: int


def retrieve(
    web: WebClient,
    resource: Resource,
    spool: Path,
    *,
    max_part_bytes: int,
    deadline: float | None = None,
    should_stop: Callable[[], None] | None = None,
) -> Iterator[Part]:
    """The instances of ``resource``, one file each, as they arrive.

    ``deadline`` (time.monotonic) bounds the whole retrieve besides the read
    timeout of each read; ``should_stop`` is called between reads and raises
    to stop it (a lost lease)."""
    url = web.root + resource.path()
    what = f"WADO-RS {resource}"
    try:
        response = web.session.get(
            url, headers={"Accept": ACCEPT}, stream=True, timeout=web.timeout
        )
        response.raise_for_status()
    except Exception as exc:
        raise http_error(exc, what) from exc
    with response:
        chunks = _chunks(response, what, deadline, should_stop)
        media_type, boundary = _content_type(response.headers.get("Content-Type", ""))
        if media_type == "application/dicom":
            # One part, not encapsulated (some servers answer a single
            # instance so): the whole body is the file.
            yield _write_until(chunks, bytearray(), None, spool, max_part_bytes)[0]
            return
        if media_type != "multipart/related" or not boundary:
            raise DicomWebResponseError(
                f"{what}: answered {media_type or 'no content type'}, not multipart/related"
            )
        yield from _split(chunks, boundary, spool, max_part_bytes, what)


def _chunks(
    response: requests.Response,
    what: str,
    deadline: float | None,
    should_stop: Callable[[], None] | None,
) -> Iterator[bytes]:
    # read1: what one read of the socket gives (at most READ_BYTES), so that
    # the deadline and the stop are checked as bytes come; a read of READ_BYTES
    # waits until that many came, which a slow service stretches at will.
    while True:
        try:
            chunk = response.raw.read1(READ_BYTES, decode_content=True)
        except urllib3.exceptions.HTTPError as exc:  # read off the raw stream: urllib3's own
            raise http_error(exc, what) from exc
        if not chunk:
            return
        if deadline is not None and time.monotonic() > deadline:
            raise DicomWebResponseError(f"{what}: not received within its deadline")
        if should_stop is not None:
            should_stop()
        yield chunk


def _content_type(header: str) -> tuple[str, bytes]:
    media_type, *params = [p.strip() for p in header.split(";")]
    boundary = b""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "boundary":
            boundary = value.strip().strip('"').encode("latin-1")
    return media_type.lower(), boundary


def _split(
    chunks: Iterator[bytes], boundary: bytes, spool: Path, max_part_bytes: int, what: str
) -> Iterator[Part]:
    """Parts of a multipart/related body (RFC 2046 5.1.1), each to a file."""
    buffer = bytearray()
    opening = b"--" + boundary
    # The preamble, up to the first boundary line.
    while (start := buffer.find(opening)) < 0:
        if len(buffer) > MAX_PART_HEADERS:
            raise DicomWebResponseError(f"{what}: no multipart boundary where the body begins")
        if not _more(chunks, buffer):
            raise DicomWebResponseError(f"{what}: the body holds no multipart boundary")
    del buffer[: start + len(opening)]
    delimiter = b"\r\n--" + boundary
    while True:
        # After a boundary: "--" ends the body, CRLF opens the next part.
        while len(buffer) < 2 and _more(chunks, buffer):
            pass
        if buffer[:2] == b"--":
            return
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            if len(buffer) > MAX_PART_HEADERS:
                raise DicomWebResponseError(
                    f"{what}: a part's headers exceed {MAX_PART_HEADERS} bytes"
                )
            if not _more(chunks, buffer):
                raise DicomWebResponseError(f"{what}: the body ends inside a part's headers")
        _check_part_headers(bytes(buffer[:end]), what)
        del buffer[: end + 4]
        part, buffer = _write_until(chunks, buffer, delimiter, spool, max_part_bytes, what)
        yield part


def _check_part_headers(block: bytes, what: str) -> None:
    for line in block.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-type":
            media = value.split(b";")[0].strip().lower()
            if media != b"application/dicom":
                raise DicomWebResponseError(
                    f"{what}: a part is {media.decode('latin-1')!r}, not application/dicom"
                )


def _more(chunks: Iterator[bytes], buffer: bytearray) -> bool:
    for chunk in chunks:
        if chunk:
            buffer += chunk
            return True
    return False


def _write_until(
    chunks: Iterator[bytes],
    buffer: bytearray,
    delimiter: bytes | None,
    spool: Path,
    max_part_bytes: int,
    what: str = "WADO-RS",
) -> tuple[Part, bytearray]:
    """Write the part's bytes up to ``delimiter`` (None: to the end of the body)
    to a new file; what follows the delimiter is given back."""
    fd, name = tempfile.mkstemp(dir=spool, prefix="wado-", suffix=".part")
    path = Path(name)
    size = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            while True:
                at = buffer.find(delimiter) if delimiter is not None else -1
                if at >= 0:
                    size = _write(handle, buffer[:at], size, max_part_bytes, what)
                    rest = bytearray(buffer[at + len(delimiter) :]) if delimiter else bytearray()
                    return Part(path, size), rest
                # Keep what could be the start of a delimiter cut by a read.
                keep = len(delimiter) - 1 if delimiter is not None else 0
                if len(buffer) > keep:
                    cut = len(buffer) - keep
                    size = _write(handle, buffer[:cut], size, max_part_bytes, what)
                    del buffer[:cut]
                if not _more(chunks, buffer):
                    if delimiter is not None:
                        raise DicomWebResponseError(f"{what}: the body ends inside a part")
                    size = _write(handle, buffer, size, max_part_bytes, what)
                    return Part(path, size), bytearray()
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _write(handle: BinaryIO, data: bytes | bytearray, size: int, limit: int, what: str) -> int:
    size += len(data)
    if size > limit:
        raise DicomWebResponseError(f"{what}: an instance exceeds {limit} bytes, the maximum")
    handle.write(data)
    return size


@dataclass(frozen=True)
class PartHeader:
    """What a retrieved file says about itself, read without holding it whole."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    transfer_syntax: str


def read_part(path: Path) -> PartHeader:
    """The header of a retrieved Part-10 file, once it is known to be whole and
    to name valid UIDs; DatasetTruncated or DicomWebResponseError otherwise."""
    with path.open("rb") as handle:
        try:
            meta = read_file_meta_info(path)
            offset = _data_set_offset(handle)
        except (OSError, ValueError, EOFError, TypeError, KeyError) as exc:
            raise DicomWebResponseError(f"a retrieved part is not a DICOM file ({exc})") from exc
        syntax = UID(str(meta.get("TransferSyntaxUID", "")))
        if not syntax or not is_valid_uid(str(syntax)):
            raise DicomWebResponseError("a retrieved part names no transfer syntax")
        if not syntax.is_deflated and path.stat().st_size > offset:
            with (
                mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped,
                memoryview(mapped) as whole,
                whole[offset:] as data_set,
            ):
                check_complete(
                    data_set,
                    implicit_vr=syntax.is_implicit_VR,
                    little_endian=syntax.is_little_endian,
                )
        handle.seek(offset)
        try:
            header: Dataset = read_dataset(
                handle,
                syntax.is_implicit_VR,
                syntax.is_little_endian,
                stop_when=lambda tag, vr, length: int(tag) > _LAST_HEADER_TAG,
                defer_size=1 << 16,
            )
        except (ValueError, EOFError, TypeError, KeyError) as exc:
            raise DatasetTruncated(f"a retrieved part does not parse ({exc})") from exc
    found = PartHeader(
        sop_class_uid=str(header.get("SOPClassUID", "")),
        sop_instance_uid=str(header.get("SOPInstanceUID", "")),
        study_instance_uid=str(header.get("StudyInstanceUID", "")),
        series_instance_uid=str(header.get("SeriesInstanceUID", "")),
        patient_id=str(header.get("PatientID", "")),
        transfer_syntax=str(syntax),
    )
    for what in ("sop_class_uid", "sop_instance_uid", "study_instance_uid", "series_instance_uid"):
        if not is_valid_uid(getattr(found, what)):
            raise DicomWebResponseError(f"a retrieved part has no valid {what.replace('_', ' ')}")
    if (
        str(meta.get("MediaStorageSOPInstanceUID", found.sop_instance_uid))
        != found.sop_instance_uid
    ):
        raise DicomWebResponseError("a retrieved part's file meta names another instance")
    return found


def _data_set_offset(handle: BinaryIO) -> int:
    """Where the data set begins: after the preamble and every group 2 element."""
    handle.seek(0)
    head = handle.read(132)
    if len(head) < 132 or head[128:132] != b"DICM":
        raise DicomWebResponseError("a retrieved part is not a Part-10 file (no DICM prefix)")
    offset = 132
    while True:
        handle.seek(offset)
        element = handle.read(12)
        if len(element) < 8 or int.from_bytes(element[:2], "little") != 0x0002:
            return offset
        vr = element[4:6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV"):
            if len(element) < 12:
                raise DatasetTruncated("a retrieved part ends inside its file meta")
            offset += 12 + int.from_bytes(element[8:12], "little")
        else:
            offset += 8 + int.from_bytes(element[6:8], "little")
