"""A patient's prior studies, written as small DICOM files for a PACS to hold."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
)

SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage}
UID_ROOT = "1.2.826.0.1.3680043.10.1078."


@dataclass(frozen=True)
class PriorStudy:
    number: int
    date: str
    modality: str
    description: str
    instances: int
    pacs: str  # which PACS holds it

    @property
    def uid(self) -> str:
        return f"{UID_ROOT}{self.number}"

    @property
    def accession(self) -> str:
        return f"ACC{self.number:04d}"

    def sop_uids(self) -> list[str]:
        return [f"{self.uid}.1.{n}" for n in range(1, self.instances + 1)]


def write_study(root: Path, patient_id: str, study: PriorStudy) -> list[Path]:
    """The study's instances as files under ``root``; their paths."""
    folder = root / study.uid
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, sop_uid in enumerate(study.sop_uids(), start=1):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = SOP_CLASS[study.modality]
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.SOPClassUID = SOP_CLASS[study.modality]
        ds.SOPInstanceUID = sop_uid
        ds.PatientID = patient_id
        ds.PatientName = "Prior^Patient"
        ds.PatientBirthDate = "19550505"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study.uid
        ds.SeriesInstanceUID = f"{study.uid}.1"
        ds.StudyDate = study.date
        ds.StudyTime = "101500"
        ds.StudyID = str(study.number)
        ds.AccessionNumber = study.accession
        ds.StudyDescription = study.description
        ds.ReferringPhysicianName = ""
        ds.Modality = study.modality
        ds.SeriesNumber = 1
        ds.InstanceNumber = n
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = bytes(range(128))
        path = folder / f"{n:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
