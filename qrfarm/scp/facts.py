"""What one C-STORE request says about itself, read and checked before storing."""

from __future__ import annotations

from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.events import Event

from qrfarm.dicom import Status
from qrfarm.dicom.completeness import check_complete
from qrfarm.dicom.identifiers import is_valid_uid
from qrfarm.errors import DatasetTruncated, InstanceRefused
from qrfarm.jobs.recording import InstanceFacts


def _stop_at_pixel_data(tag: Any, vr: Any, length: Any) -> bool:
    return int(tag) >= 0x7FE00010


def _header(raw: bytes, syntax: UID) -> Dataset:
    """The data set up to its pixel data, decoded; raises on what cannot be parsed."""
    if syntax.is_deflated:
        return decode(BytesIO(raw), syntax.is_implicit_VR, syntax.is_little_endian, True)
    check_complete(raw, implicit_vr=syntax.is_implicit_VR, little_endian=syntax.is_little_endian)
    return read_dataset(
        BytesIO(raw),
        syntax.is_implicit_VR,
        syntax.is_little_endian,
        stop_when=_stop_at_pixel_data,
    )


def read_facts(event: Event, raw: bytes) -> InstanceFacts:
    """The facts of a C-STORE; InstanceRefused, with the status to answer, if not acceptable."""
    request = event.request
    assert isinstance(request, C_STORE)
    sop_class = str(request.AffectedSOPClassUID or "")
    sop_uid = str(request.AffectedSOPInstanceUID or "")
    syntax = UID(str(event.context.transfer_syntax))
    try:
        header = _header(raw, syntax)
        study = str(header.get("StudyInstanceUID", "") or "")
        series = str(header.get("SeriesInstanceUID", "") or "")
        dataset_sop = str(header.get("SOPInstanceUID", "") or "")
        dataset_class = str(header.get("SOPClassUID", "") or "")
        patient_id = str(header.get("PatientID", "") or "")
    except DatasetTruncated as exc:
        raise InstanceRefused(Status.CANNOT_UNDERSTAND, f"data set cut short: {exc}") from exc
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
    originator = request.MoveOriginatorApplicationEntityTitle
    originator_id = request.MoveOriginatorMessageID
    address = event.assoc.requestor.address
    return InstanceFacts(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_uid,
        study_instance_uid=study,
        series_instance_uid=series,
        patient_id=patient_id,
        transfer_syntax=str(syntax),
        calling_ae=str(event.assoc.requestor.ae_title).strip(),
        called_ae=str(event.assoc.acceptor.ae_title).strip(),
        peer_host=str(address) if address else None,
        originator_ae=str(originator).strip() if originator else None,
        originator_message_id=int(originator_id) if originator_id is not None else None,
        size=len(raw),
    )
