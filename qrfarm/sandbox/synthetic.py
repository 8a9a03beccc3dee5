"""A small, deterministic synthetic DICOM corpus written as Part-10 files.

The corpus is what the sandbox PACS and the test peers are loaded with. It is
made to exercise what query/retrieve gets wrong in the field: names in two
specific character sets, several studies per patient, study dates spread over
years (date-range matching), a multi-frame image, non-image objects (PDF, SR)
and one large study whose retrieve produces hundreds of sub-operations.

Every UID is built from counters under one root, and no value depends on the
clock or on chance, so two runs produce the same files byte for byte.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    CTImageStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
)

from .synthetic_content import add_cross_sectional, add_multiframe, add_pdf, add_sr

UID_ROOT = "1.2.826.0.1.3680043.10.1234."
"""Root of every UID the generator makes (the counters are appended to it)."""

_IMPLEMENTATION_CLASS_UID = UID_ROOT + "0.1"
_IMPLEMENTATION_VERSION = "QRFARM_SYNTH1"

Kind = Literal["CT", "MR", "MFSC", "PDF", "SR"]

_SOP_CLASS: dict[Kind, UID] = {
    "CT": CTImageStorage,
    "MR": MRImageStorage,
    "MFSC": MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    "PDF": EncapsulatedPDFStorage,
    "SR": BasicTextSRStorage,
}
_MODALITY: dict[Kind, str] = {"CT": "CT", "MR": "MR", "MFSC": "OT", "PDF": "DOC", "SR": "SR"}


@dataclass(frozen=True)
class SyntheticInstance:
    """One written file and the identifiers a test needs to find it again."""

    path: Path
    patient_id: str
    patient_name: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str
    study_date: str


@dataclass
class Corpus:
    """The generated instances, with the groupings tests ask for."""

    root: Path
    instances: list[SyntheticInstance]
    large_study_uid: str = ""

    def patients(self) -> dict[str, list[SyntheticInstance]]:
        """Patient ID -> its instances."""
        return _group(self.instances, lambda i: i.patient_id)

    def studies(self) -> dict[str, list[SyntheticInstance]]:
        """Study Instance UID -> its instances."""
        return _group(self.instances, lambda i: i.study_uid)

    def series(self) -> dict[str, list[SyntheticInstance]]:
        """Series Instance UID -> its instances."""
        return _group(self.instances, lambda i: i.series_uid)

    def by_sop_uid(self) -> dict[str, SyntheticInstance]:
        """SOP Instance UID -> the instance."""
        return {i.sop_uid: i for i in self.instances}


def _group(
    instances: Iterable[SyntheticInstance], key: Callable[[SyntheticInstance], str]
) -> dict[str, list[SyntheticInstance]]:
    groups: defaultdict[str, list[SyntheticInstance]] = defaultdict(list)
    for instance in instances:
        groups[key(instance)].append(instance)
    return dict(groups)


# --- what the corpus holds -------------------------------------------------


@dataclass(frozen=True)
class _Patient:
    patient_id: str
    name: str
    charset: str | None  # None: the default repertoire, no (0008,0005) written
    birth_date: str
    sex: str


@dataclass(frozen=True)
class _Series:
    kind: Kind
    description: str
    count: int
    size: int = 64  # rows = columns
    frames: int = 1


@dataclass(frozen=True)
class _Study:
    patient: _Patient
    date: str
    time: str
    description: str
    referring: str
    series: tuple[_Series, ...] = field(default_factory=tuple)


_DOE = _Patient("P001", "Doe^John", None, "19600101", "M")
# Latin-1 (ISO_IR 100) and UTF-8 (ISO_IR 192) names: a C-FIND answer must
# decode each with its own character set, and some PACS re-encode them.
_MUELLER = _Patient("P002", "Müller^Jürgen", "ISO_IR 100", "19711231", "M")
_STEFAN = _Patient("P003", "Ŝtefan^Łukasz", "ISO_IR 192", "19850615", "M")
_SMITH = _Patient("P004", "Smith^Jane", None, "19900220", "F")
_PAPADOPOULOU = _Patient("P005", "Παπαδοπούλου^Ελένη", "ISO_IR 192", "19480704", "F")


def _layout(large_study_instances: int) -> list[_Study]:
    """The studies, in the order their counters are handed out."""
    thirds = [large_study_instances // 3] * 3
    for i in range(large_study_instances % 3):
        thirds[i] += 1
    return [
        _Study(
            _DOE,
            "20150314",
            "081500",
            "CT Chest",
            "Brown^Alice",
            (
                _Series("CT", "Chest axial", 10),
                _Series("CT", "Chest coronal", 5),
            ),
        ),
        _Study(
            _DOE,
            "20190602",
            "143000.250",
            "MR Brain",
            "Brown^Alice",
            (
                _Series("MR", "T1 axial", 8),
                _Series("MR", "T2 axial", 8),
            ),
        ),
        _Study(
            _DOE,
            "20211120",
            "100000",
            "Reports",
            "Brown^Alice",
            (
                _Series("PDF", "Referral letter", 1),
                _Series("SR", "Radiology report", 1),
            ),
        ),
        _Study(
            _MUELLER,
            "20170109",
            "071005",
            "CT Abdomen",
            "Größer^Hans",
            (
                _Series("CT", "Abdomen axial", 6),
                _Series("MFSC", "Cine capture", 1, frames=8),
            ),
        ),
        _Study(
            _STEFAN,
            "20180830",
            "160000",
            "MR Knee",
            "Żak^Paweł",
            (
                _Series("MR", "PD sagittal", 6),
                _Series("SR", "Knee report", 1),
            ),
        ),
        _Study(
            _PAPADOPOULOU,
            "20120229",
            "093000",
            "CT Head",
            "Νικολάου^Γιώργος",
            (_Series("CT", "Head axial", 4),),
        ),
        _Study(
            _SMITH,
            "20230517",
            "120000",
            "CT Chest Abdomen Pelvis",
            "Jones^Bob",
            tuple(
                _Series("CT", f"CAP part {n + 1}", count, size=128)
                for n, count in enumerate(thirds)
                if count
            ),
        ),
    ]


# --- generation ---------------------------------------------------------------


def generate_corpus(root: Path, large_study_instances: int = 300) -> Corpus:
    """Write the synthetic corpus under ``root`` and describe what was written.

    Files are ``root/<PatientID>/study<N>/series<M>/<InstanceNumber>.dcm``,
    Part-10 with Explicit VR Little Endian.
    """
    if large_study_instances < 0:
        raise ValueError("large_study_instances must not be negative")
    root.mkdir(parents=True, exist_ok=True)
    instances: list[SyntheticInstance] = []
    large_study_uid = ""
    studies = _layout(large_study_instances)
    for study_no, study in enumerate(studies, start=1):
        study_uid = f"{UID_ROOT}1.{study_no}"
        if study is studies[-1] and study.series:
            large_study_uid = study_uid
        for series_no, series in enumerate(study.series, start=1):
            series_dir = root / study.patient.patient_id / f"study{study_no}" / f"series{series_no}"
            series_dir.mkdir(parents=True, exist_ok=True)
            for instance_no in range(1, series.count + 1):
                ds = _instance(study, study_no, series, series_no, instance_no)
                path = series_dir / f"{instance_no:04d}.dcm"
                ds.save_as(path, enforce_file_format=True)
                instances.append(
                    SyntheticInstance(
                        path=path,
                        patient_id=study.patient.patient_id,
                        patient_name=study.patient.name,
                        study_uid=study_uid,
                        series_uid=str(ds.SeriesInstanceUID),
                        sop_uid=str(ds.SOPInstanceUID),
                        sop_class_uid=str(ds.SOPClassUID),
                        modality=str(ds.Modality),
                        study_date=study.date,
                    )
                )
    return Corpus(root=root, instances=instances, large_study_uid=large_study_uid)


def _instance(study: _Study, study_no: int, series: _Series, series_no: int, n: int) -> Dataset:
    sop_class = _SOP_CLASS[series.kind]
    sop_uid = f"{UID_ROOT}3.{study_no}.{series_no}.{n}"

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(_IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = _IMPLEMENTATION_VERSION

    ds = Dataset()
    ds.file_meta = meta
    patient = study.patient
    if patient.charset:
        ds.SpecificCharacterSet = patient.charset
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = study.date
    ds.StudyDate = study.date
    ds.SeriesDate = study.date
    ds.ContentDate = study.date
    ds.StudyTime = study.time
    ds.SeriesTime = study.time
    ds.ContentTime = study.time
    ds.AccessionNumber = f"ACC{study.date[:4]}{study_no:03d}"
    ds.Modality = _MODALITY[series.kind]
    ds.Manufacturer = "qrfarm synthetic"
    ds.InstitutionName = "qrfarm test hospital"
    ds.ReferringPhysicianName = study.referring
    ds.StudyDescription = study.description
    ds.SeriesDescription = series.description
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = "QRFARM"
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.StudyInstanceUID = f"{UID_ROOT}1.{study_no}"
    ds.SeriesInstanceUID = f"{UID_ROOT}2.{study_no}.{series_no}"
    ds.StudyID = f"S{study_no}"
    ds.SeriesNumber = series_no
    ds.InstanceNumber = n

    if series.kind in ("CT", "MR"):
        add_cross_sectional(ds, series, f"{UID_ROOT}4.{study_no}", series_no, n)
    elif series.kind == "MFSC":
        add_multiframe(ds, series, n)
    elif series.kind == "PDF":
        add_pdf(ds, study)
    else:
        add_sr(ds, study)
    return ds
