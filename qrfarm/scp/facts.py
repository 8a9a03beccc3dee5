"""What one C-STORE request says about itself, read and checked before storing."""

from __future__ import annotations

import mmap
import struct
import zlib
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from qrfarm.dicom import Status
from qrfarm.dicom.completeness import check_complete
from qrfarm.dicom.identifiers import is_valid_uid
from qrfarm.errors import DatasetTruncated, InstanceRefused
from qrfarm.jobs.recording import InstanceFacts

# Of a deflated data set, only this much is inflated to read its header.
HEADER_BYTES = 1 << 20
_INFLATE_STEP = 1 << 20
_LAST_HEADER_TAG = 0x0020000E  # Series Instance UID: every UID needed is at or before it
_PREAMBLE = 128 + 4


def _past_header(tag: Any, vr: Any, length: Any) -> bool:
    return int(tag) > _LAST_HEADER_TAG


def data_set_offset(handle: BinaryIO) -> int:
    """Where the data set begins in a Part-10 file written by pynetdicom (after
    the preamble and the file meta, whose group length it always writes)."""
    head = handle.read(_PREAMBLE + 12)
    if (
        len(head) < _PREAMBLE + 12
        or head[128:132] != b"DICM"
        or head[132:136] != b"\x02\x00\x00\x00"
    ):
        raise DatasetTruncated("no file meta ahead of the data set")
    (group_length,) = struct.unpack_from("<L", head, _PREAMBLE + 8)
    return _PREAMBLE + 12 + int(group_length)


def _header(path: Path, offset: int, syntax: UID, max_bytes: int) -> Dataset:
    """The data set's first elements, decoded; raises on what cannot be parsed
    or is not whole. Nothing is held whole: a plain data set is walked through
    a mapping of its file, a deflated one inflated a block at a time."""
    with path.open("rb") as handle:
        if syntax.is_deflated:
            handle.seek(offset)
            head = _inflate_checked(handle, max_bytes)
            stream = BytesIO(head)
            header = read_dataset(
                stream, syntax.is_implicit_VR, syntax.is_little_endian, stop_when=_past_header
            )
            if len(head) >= HEADER_BYTES and stream.tell() >= len(head):
                # The read ran to the end of what was inflated, not past the
                # Series Instance UID: a value there may be cut short.
                raise DatasetTruncated(
                    f"its identifying elements do not end within its first {HEADER_BYTES} bytes"
                )
            return header
        size = path.stat().st_size
        if size > offset:
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
        return read_dataset(
            handle,
            syntax.is_implicit_VR,
            syntax.is_little_endian,
            stop_when=_past_header,
            defer_size=1 << 16,
        )


def _inflate_checked(handle: BinaryIO, max_bytes: int) -> bytes:
    """The first HEADER_BYTES of a deflated data set; the rest inflated and
    thrown away, to know the stream is whole and inflates to no more than
    ``max_bytes`` (a small data set can inflate to gigabytes)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    header = bytearray()
    inflated = 0
    while block := handle.read(_INFLATE_STEP):
        while block:
            out = inflater.decompress(block, _INFLATE_STEP)
            inflated += len(out)
            if len(header) < HEADER_BYTES:
                header += out[: HEADER_BYTES - len(header)]
            if inflated > max_bytes:
                raise InstanceRefused(
                    Status.OUT_OF_RESOURCES,
                    f"deflated data set inflates past {max_bytes} bytes, the maximum",
                )
            block = inflater.unconsumed_tail
            if inflater.eof:
                break
        if inflater.eof:
            break
    if not inflater.eof:
        raise DatasetTruncated("the deflated data set ends before its stream does")
    return bytes(header)


@dataclass(frozen=True)
class StoreRequest:
    """What a C-STORE request and its association say, whichever path received it."""

    sop_class_uid: str
    sop_instance_uid: str
    context_abstract_syntax: str  # the SOP class its presentation context was negotiated for
    transfer_syntax: str
    calling_ae: str
    called_ae: str
    peer_host: str | None
    originator_ae: str | None
    originator_message_id: int | None

    @classmethod
    def of_event(cls, event: Event) -> StoreRequest:
        request = event.request
        assert isinstance(request, C_STORE)
        originator = request.MoveOriginatorApplicationEntityTitle
        originator_id = request.MoveOriginatorMessageID
        address = event.assoc.requestor.address
        return cls(
            sop_class_uid=str(request.AffectedSOPClassUID or ""),
            sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
            context_abstract_syntax=str(event.context.abstract_syntax),
            transfer_syntax=str(event.context.transfer_syntax),
            calling_ae=str(event.assoc.requestor.ae_title).strip(),
            called_ae=str(event.assoc.acceptor.ae_title).strip(),
            peer_host=str(address) if address else None,
            originator_ae=str(originator).strip() if originator else None,
            originator_message_id=int(originator_id) if originator_id is not None else None,
        )


def read_facts(event: Event, path: Path, max_bytes: int) -> InstanceFacts:
    """The facts of a C-STORE whose data set pynetdicom wrote to ``path``."""
    return facts_of(StoreRequest.of_event(event), path, max_bytes)


def facts_of(request: StoreRequest, path: Path, max_bytes: int) -> InstanceFacts:
    """The facts of a C-STORE whose data set was written to ``path`` (a Part-10
    file); InstanceRefused, with the status to answer, if not acceptable."""
    sop_class = request.sop_class_uid
    sop_uid = request.sop_instance_uid
    offered_as = request.context_abstract_syntax
    if sop_class != offered_as:
        # The association negotiated this context for another SOP class.
        raise InstanceRefused(
            Status.SOP_CLASS_NOT_SUPPORTED,
            f"{sop_class} sent on a context for {offered_as}",
        )
    syntax = UID(request.transfer_syntax)
    try:
        with path.open("rb") as handle:
            offset = data_set_offset(handle)
        size = path.stat().st_size - offset
        if size > max_bytes:
            raise InstanceRefused(Status.OUT_OF_RESOURCES, too_large(size, max_bytes))
        header = _header(path, offset, syntax, max_bytes)
        study = str(header.get("StudyInstanceUID", "") or "")
        series = str(header.get("SeriesInstanceUID", "") or "")
        dataset_sop = str(header.get("SOPInstanceUID", "") or "")
        dataset_class = str(header.get("SOPClassUID", "") or "")
        patient_id = str(header.get("PatientID", "") or "")
    except InstanceRefused:
        raise
    except DatasetTruncated as exc:
        raise InstanceRefused(Status.CANNOT_UNDERSTAND, f"data set cut short: {exc}") from exc
    except OSError as exc:
        # The SCP's own temp file, not the data set: the sender may try again.
        raise InstanceRefused(
            Status.OUT_OF_RESOURCES, f"data set not read back from disk: {exc.strerror}"
        ) from exc
    except Exception as exc:
        raise InstanceRefused(
            Status.CANNOT_UNDERSTAND, f"data set cannot be parsed: {exc}"
        ) from exc
    for what, uid in (
        ("SOP Instance UID", sop_uid),
        ("Study Instance UID", study),
        ("Series Instance UID", series),
    ):
        if not is_valid_uid(uid):
            raise InstanceRefused(Status.CANNOT_UNDERSTAND, f"{what} {uid!r} is not a valid UID")
    if dataset_sop != sop_uid or dataset_class != sop_class:
        raise InstanceRefused(
            Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"data set is {dataset_class or '?'} / {dataset_sop or '?'}, "
            f"request says {sop_class} / {sop_uid}",
        )
    return InstanceFacts(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_uid,
        study_instance_uid=study,
        series_instance_uid=series,
        patient_id=patient_id,
        transfer_syntax=str(syntax),
        calling_ae=request.calling_ae,
        called_ae=request.called_ae,
        peer_host=request.peer_host,
        originator_ae=request.originator_ae,
        originator_message_id=request.originator_message_id,
        size=size,
    )


def too_large(size: int, max_bytes: int) -> str:
    """The Error Comment of an instance over the limit (at most 64 characters)."""
    return f"instance of {size} bytes is over the maximum of {max_bytes}"
