"""The Q/R level each common attribute lives at (PS3.4 C.6.1.1 and C.6.2.1):
what decides whether a key belongs in an identifier of a given level."""

from __future__ import annotations

from .model import Level, Root

# The level each common attribute lives at (PS3.4 C.6.1.1 and C.6.2.1). In the
# study root the patient attributes belong to the STUDY level.
LEVEL_OF: dict[str, Level] = {
    **dict.fromkeys(
        [
            "PatientName",
            "PatientID",
            "IssuerOfPatientID",
            "PatientBirthDate",
            "PatientBirthTime",
            "PatientSex",
            "OtherPatientIDsSequence",
            "OtherPatientNames",
            "EthnicGroup",
            "PatientComments",
            "NumberOfPatientRelatedStudies",
            "NumberOfPatientRelatedSeries",
            "NumberOfPatientRelatedInstances",
        ],
        Level.PATIENT,
    ),
    **dict.fromkeys(
        [
            "StudyInstanceUID",
            "StudyDate",
            "StudyTime",
            "AccessionNumber",
            "StudyID",
            "StudyDescription",
            "ReferringPhysicianName",
            "ModalitiesInStudy",
            "SOPClassesInStudy",
            "AnatomicRegionsInStudyCodeSequence",
            "NameOfPhysiciansReadingStudy",
            "AdmittingDiagnosesDescription",
            "PatientAge",
            "PatientSize",
            "PatientWeight",
            "Occupation",
            "AdditionalPatientHistory",
            "OtherStudyNumbers",
            "NumberOfStudyRelatedSeries",
            "NumberOfStudyRelatedInstances",
            "InstitutionName",
        ],
        Level.STUDY,
    ),
    **dict.fromkeys(
        [
            "SeriesInstanceUID",
            "Modality",
            "SeriesNumber",
            "SeriesDescription",
            "SeriesDate",
            "SeriesTime",
            "BodyPartExamined",
            "Laterality",
            "PerformedProcedureStepStartDate",
            "PerformedProcedureStepStartTime",
            "RequestAttributesSequence",
            "NumberOfSeriesRelatedInstances",
            "ProtocolName",
            "Manufacturer",
        ],
        Level.SERIES,
    ),
    **dict.fromkeys(
        [
            "SOPInstanceUID",
            "SOPClassUID",
            "InstanceNumber",
            "ContentDate",
            "ContentTime",
            "NumberOfFrames",
            "Rows",
            "Columns",
            "AcquisitionDate",
            "AcquisitionTime",
            "ImageType",
            "ConceptNameCodeSequence",
            "AvailableTransferSyntaxUID",
        ],
        Level.IMAGE,
    ),
}


def level_of(keyword: str, root: Root) -> Level | None:
    """The level an attribute belongs to under ``root``, if it is a known key."""
    level = LEVEL_OF.get(keyword)
    if level is Level.PATIENT and root is Root.STUDY:
        return Level.STUDY
    return level
