"""Pseudonymised delivery: nothing of the patient left in any element."""

from __future__ import annotations

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from qrfarm.delivery.pseudonymise import Pseudonymiser

NAME = "DOE^JOHN"
PATIENT_ID = "PID-4711"


def _with_patient_everywhere() -> Dataset:
    """A data set whose free-text fields carry the patient, as reports and
    operators' notes in the field do."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.PatientName = NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19700101"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.StudyDescription = f"CT head for {NAME}"
    ds.SeriesDescription = f"axial {PATIENT_ID}"
    ds.PatientComments = f"{NAME} allergic"
    ds.ImageComments = f"see {NAME}"
    ds.AdditionalPatientHistory = f"{NAME} fell"
    ds.RequestedProcedureDescription = f"for {NAME}"
    ds.PerformedProcedureStepDescription = f"for {NAME}"
    ds.StudyComments = f"{NAME}"
    ds.AdmittingDiagnosesDescription = f"{NAME}"
    ds.DerivationDescription = f"{NAME}"
    ds.ProtocolName = f"{NAME} protocol"
    item = Dataset()
    item.TextValue = f"report on {NAME}"
    ds.ContentSequence = Sequence([item])
    request = Dataset()
    request.RequestedProcedureDescription = f"for {NAME}"
    ds.RequestAttributesSequence = Sequence([request])
    return ds


def _texts(ds: Dataset) -> list[str]:
    found: list[str] = []

    def visit(_ds: Dataset, element: object) -> None:
        value = getattr(element, "value", None)
        if isinstance(value, str | bytes):
            found.append(value.decode("latin-1") if isinstance(value, bytes) else value)
        elif value is not None and not isinstance(value, Sequence):
            found.append(str(value))

    ds.walk(visit)
    return found


def test_no_element_keeps_the_patients_name_or_id() -> None:
    ds = _with_patient_everywhere()
    Pseudonymiser("seed-1")(ds)
    texts = _texts(ds)
    assert not [t for t in texts if "DOE" in t or PATIENT_ID in t]
    assert "19700101" not in texts
