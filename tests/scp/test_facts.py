"""Reading what a C-STORE's data set says about itself, against data sets
built to mislead the reading."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian

from qrfarm.dicom import Status
from qrfarm.errors import InstanceRefused
from qrfarm.scp.facts import HEADER_BYTES, StoreRequest, facts_of

CT = "1.2.840.10008.5.1.4.1.1.2"
SOP = "1.2.826.0.1.3680043.10.4444.1"
STUDY = "1.2.826.0.1.3680043.10.5555.77"
SERIES = "1.2.826.0.1.3680043.10.5555.77.1"


def _encoded(padding: int) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = SOP
    ds.add_new(0x00190010, "LO", "QRFARM TEST")
    ds.add_new(0x00191000, "OB", b"\0" * padding)
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = SERIES
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return out.getvalue()


def test_a_deflated_header_cut_inside_a_uid_is_refused_not_recorded_short(
    tmp_path: Path,
) -> None:
    """The Series Instance UID placed across the end of the part inflated to
    read the header, cut after "1.2.82": a shorter UID, valid as such, must
    not be taken for it."""
    first = _encoded(1024)
    # Where the series UID's value begins, moved to six bytes before the cut.
    padding = 1024 + (HEADER_BYTES - 6) - first.index(SERIES.encode())
    data_set = _encoded(padding)
    assert data_set.index(SERIES.encode()) == HEADER_BYTES - 6
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = compressor.compress(data_set) + compressor.flush()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT
    meta.MediaStorageSOPInstanceUID = SOP
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    head = DicomBytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta)
    path = tmp_path / "received.dcm"
    path.write_bytes(head.getvalue() + deflated)
    request = StoreRequest(
        sop_class_uid=CT,
        sop_instance_uid=SOP,
        context_abstract_syntax=CT,
        transfer_syntax=str(DeflatedExplicitVRLittleEndian),
        calling_ae="STORESCU",
        called_ae="QRFARMSCP",
        peer_host="127.0.0.1",
        originator_ae=None,
        originator_message_id=None,
    )
    with pytest.raises(InstanceRefused) as refused:
        facts_of(request, path, 64 << 20)
    assert refused.value.status == Status.CANNOT_UNDERSTAND
