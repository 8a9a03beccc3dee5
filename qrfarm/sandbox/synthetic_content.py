"""What each kind of synthetic instance carries beyond the common header:
cross-sectional pixels (CT, MR), a multi-frame image, a PDF, a text SR.

Pixels are a smooth pattern rotated per frame seed, so that swapped
instances show, and no value depends on the clock or on chance.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

if TYPE_CHECKING:
    from .synthetic import _Series, _Study


def _add_image_pixels(ds: Dataset, size: int, frames: Sequence[int]) -> None:
    """16-bit unsigned grey pixels, 12 bits stored; one pattern per frame seed."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = b"".join(_frame(size, seed) for seed in frames)


def add_cross_sectional(
    ds: Dataset, series: _Series, frame_of_reference_uid: str, series_no: int, n: int
) -> None:
    ds.PatientOrientation = ""
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.AcquisitionNumber = 1
    ds.SliceThickness = "2.5"
    ds.PixelSpacing = ["0.7", "0.7"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.ImagePositionPatient = ["0", "0", f"{-2.5 * n:g}"]
    ds.SliceLocation = f"{-2.5 * n:g}"
    if series.kind == "CT":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.KVP = "120"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = "500"
        ds.EchoTime = "15"
        ds.EchoTrainLength = 1
        ds.MagneticFieldStrength = "1.5"
    _add_image_pixels(ds, series.size, [series_no * 1000 + n])


def add_multiframe(ds: Dataset, series: _Series, n: int) -> None:
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ConversionType = "WSD"
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "NO"
    ds.NumberOfFrames = series.frames
    ds.FrameIncrementPointer = 0x00181063  # (0018,1063) Frame Time
    ds.FrameTime = "100"
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    _add_image_pixels(ds, series.size, [5000 + 10 * n + f for f in range(series.frames)])


def add_pdf(ds: Dataset, study: _Study) -> None:
    document = _tiny_pdf(f"{study.description} for {study.patient.patient_id}")
    ds.ConversionType = "WSD"
    ds.BurnedInAnnotation = "NO"
    ds.DocumentTitle = "Referral letter"
    ds.ConceptNameCodeSequence = []
    ds.AcquisitionDateTime = study.date + study.time.split(".")[0]
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(document)
    ds.EncapsulatedDocument = document + b"\x00" * (len(document) % 2)  # OB: even length


def add_sr(ds: Dataset, study: _Study) -> None:
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = []
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = [_code("18748-4", "LN", "Diagnostic imaging report")]
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = [_code("121071", "DCM", "Finding")]
    item.TextValue = f"{study.description}: no acute findings."
    ds.ContentSequence = [item]


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue = value
    code.CodingSchemeDesignator = scheme
    code.CodeMeaning = meaning
    return code


@lru_cache(maxsize=4)
def _base_pattern(size: int) -> bytes:
    """A smooth 12-bit pattern, computed once per size and rotated per frame."""
    values = array(
        "H", (((x * 37 + y * 11) ^ (x * y)) & 0x0FFF for y in range(size) for x in range(size))
    )
    if sys.byteorder == "big":
        values.byteswap()  # pixel data is little endian on disk
    return values.tobytes()


def _frame(size: int, seed: int) -> bytes:
    """A frame that differs for each seed, so that swapped instances show."""
    base = _base_pattern(size)
    shift = (seed * 2 * 97) % len(base)  # even: keep 16-bit words whole
    return base[shift:] + base[:shift]


def _tiny_pdf(text: str) -> bytes:
    """A minimal, valid one-page PDF (cross-reference offsets computed)."""
    safe = "".join(c for c in text if c.isascii() and c not in "()\\")
    stream = f"BT /F1 12 Tf 72 720 Td ({safe}) Tj ET".encode("ascii")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)
