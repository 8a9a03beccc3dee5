"""C-GET sinks answer success only for a whole instance that is what it claims."""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import decode, encode

from qrfarm.dicom import DirectorySink, MemorySink, Status
from qrfarm.dicom.completeness import check_complete
from qrfarm.errors import DatasetTruncated
from qrfarm.sandbox.synthetic import Corpus


@dataclass
class FakeStore:
    """Stands in for a C-STORE request: what the sink reads of it."""

    raw: bytes
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str = ExplicitVRLittleEndian

    def dataset_bytes(self) -> bytes:
        return self.raw

    def part10_bytes(self) -> bytes:
        return b"\0" * 128 + b"DICM" + self.raw  # enough for the sink to write

    def dataset(self) -> Dataset:
        return decode(BytesIO(self.raw), False, True)


def _request(path: Path, cut: int | None = None, **override: str) -> FakeStore:
    ds = dcmread(path)
    raw = encode(ds, False, True)
    assert raw is not None
    return FakeStore(
        raw[:cut] if cut else raw,
        override.get("sop_instance_uid", str(ds.SOPInstanceUID)),
        override.get("sop_class_uid", str(ds.SOPClassUID)),
    )


def test_every_corpus_instance_is_whole_in_both_vr_encodings(corpus: Corpus) -> None:
    for instance in corpus.instances[::10]:
        ds = dcmread(instance.path)
        for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            raw = encode(ds, syntax.is_implicit_VR, True)
            assert raw is not None
            check_complete(raw, implicit_vr=syntax.is_implicit_VR, little_endian=True)


def test_a_data_set_cut_inside_its_pixel_data_is_truncated(corpus: Corpus) -> None:
    request = _request(corpus.instances[0].path)
    with pytest.raises(DatasetTruncated, match=r"\(7FE0,0010\) announces \d+ bytes, \d+ arrived"):
        check_complete(request.raw[:-100], implicit_vr=False, little_endian=True)


def test_a_sequence_never_closed_is_truncated() -> None:
    ds = Dataset()
    item = Dataset()
    item.CodeValue = "121071"
    ds.ConceptNameCodeSequence = [item]
    ds["ConceptNameCodeSequence"].is_undefined_length = True
    raw = encode(ds, False, True)
    assert raw is not None
    assert raw.endswith(b"\xfe\xff\xdd\xe0\0\0\0\0")  # the sequence delimiter
    check_complete(raw, implicit_vr=False, little_endian=True)
    with pytest.raises(DatasetTruncated, match=r"never closed|cut short"):
        check_complete(raw[:-8], implicit_vr=False, little_endian=True)


def test_sinks_refuse_a_cut_short_instance_and_write_nothing(
    corpus: Corpus, tmp_path: Path
) -> None:
    request = _request(corpus.instances[0].path, cut=-100)
    directory = DirectorySink(tmp_path / "got")
    assert directory(request) == Status.CANNOT_UNDERSTAND  # type: ignore[arg-type]
    assert list((tmp_path / "got").iterdir()) == []
    assert MemorySink()(request) == Status.CANNOT_UNDERSTAND  # type: ignore[arg-type]


def test_sinks_refuse_an_instance_that_is_not_what_the_request_says(
    corpus: Corpus, tmp_path: Path
) -> None:
    wrong_uid = _request(corpus.instances[0].path, sop_instance_uid="1.2.3.4")
    assert MemorySink()(wrong_uid) == Status.DATASET_DOES_NOT_MATCH_SOP_CLASS  # type: ignore[arg-type]
    wrong_class = _request(corpus.instances[0].path, sop_class_uid="1.2.840.10008.5.1.4.1.1.4")
    assert DirectorySink(tmp_path)(wrong_class) == Status.DATASET_DOES_NOT_MATCH_SOP_CLASS  # type: ignore[arg-type]


def test_a_uid_built_to_escape_the_directory_never_becomes_a_path(
    corpus: Corpus, tmp_path: Path
) -> None:
    request = _request(corpus.instances[0].path, sop_instance_uid="../../escape")
    assert DirectorySink(tmp_path / "got")(request) == Status.CANNOT_UNDERSTAND  # type: ignore[arg-type]
    assert not (tmp_path / "escape.dcm").exists()
    assert list((tmp_path / "got").iterdir()) == []


def test_directory_sink_writes_the_file_under_its_uid(corpus: Corpus, tmp_path: Path) -> None:
    request = _request(corpus.instances[0].path)
    sink = DirectorySink(tmp_path)
    assert sink(request) == 0  # type: ignore[arg-type]
    written = tmp_path / f"{request.sop_instance_uid}.dcm"
    assert sink.paths == {request.sop_instance_uid: written}
    assert written.read_bytes().endswith(request.raw)
    assert not list(tmp_path.glob("*.part"))
