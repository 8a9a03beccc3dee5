"""Conversion for a destination that refuses the held syntax: what pydicom here can
decode is made uncompressed, pixels unchanged; what it cannot is refused saying so."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)

from qrfarm.delivery.transcode import converted
from qrfarm.errors import SyntaxRefused


def _image() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = 16, 16
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    pixels = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 13) % 4096
    ds.PixelData = pixels.tobytes()
    return ds


def test_rle_is_decoded_for_an_uncompressed_destination() -> None:
    ds = _image()
    original = bytes(ds.PixelData)
    uid = ds.SOPInstanceUID
    ds.compress(RLELossless, generate_instance_uid=False)
    assert ds.file_meta.TransferSyntaxUID == RLELossless
    converted(ds, str(ImplicitVRLittleEndian))
    assert not ds.file_meta.TransferSyntaxUID.is_compressed
    assert bytes(ds.PixelData) == original
    assert ds.SOPInstanceUID == uid  # the same instance, not a new one


def test_a_syntax_nothing_here_decodes_is_refused_naming_it() -> None:
    ds = _image()
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8not really a jpeg\xff\xd9"])
    with pytest.raises(SyntaxRefused, match=r"JPEG Lossless.*cannot be decoded here"):
        converted(ds, str(ExplicitVRLittleEndian))
