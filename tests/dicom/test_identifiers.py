"""Identifier rules: every one refuses a bad identifier, naming attribute and rule."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from qrfarm.dicom import (
    Level,
    Root,
    build_query_identifier,
    build_retrieve_identifier,
    parse_key,
    validate_query_identifier,
    validate_retrieve_identifier,
)
from qrfarm.errors import InvalidIdentifier

STUDY = "1.2.826.0.1.3680043.10.1.1"
SERIES = "1.2.826.0.1.3680043.10.1.1.1"
IMAGE = "1.2.826.0.1.3680043.10.1.1.1.1"


def test_patient_root_image_retrieve_holds_all_four_unique_keys() -> None:
    ds = build_retrieve_identifier(
        Root.PATIENT,
        Level.IMAGE,
        {
            "PatientID": "P1",
            "StudyInstanceUID": STUDY,
            "SeriesInstanceUID": SERIES,
            "SOPInstanceUID": [IMAGE, IMAGE + "2"],
        },
    )
    assert ds.QueryRetrieveLevel == "IMAGE"
    assert [e.keyword for e in ds] == [
        "SOPInstanceUID",
        "QueryRetrieveLevel",
        "PatientID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
    ]
    assert list(ds.SOPInstanceUID) == [IMAGE, IMAGE + "2"]


def test_study_root_series_retrieve_needs_only_study_and_series() -> None:
    ds = build_retrieve_identifier(
        Root.STUDY, Level.SERIES, {"StudyInstanceUID": STUDY, "SeriesInstanceUID": SERIES}
    )
    assert "PatientID" not in ds


@pytest.mark.parametrize(
    ("root", "level", "keys", "attribute", "rule"),
    [
        (
            Root.STUDY,
            Level.SERIES,
            {"SeriesInstanceUID": SERIES},
            "StudyInstanceUID",
            "needs this unique key",
        ),
        (
            Root.PATIENT,
            Level.STUDY,
            {"StudyInstanceUID": STUDY},
            "PatientID",
            "needs this unique key",
        ),
        (
            Root.STUDY,
            Level.STUDY,
            {"StudyInstanceUID": STUDY, "PatientName": "X"},
            "PatientName",
            "only the unique keys",
        ),
        (
            Root.STUDY,
            Level.STUDY,
            {"StudyInstanceUID": STUDY, "SeriesInstanceUID": SERIES},
            "SeriesInstanceUID",
            "only the unique keys",
        ),
        (
            Root.STUDY,
            Level.SERIES,
            {"StudyInstanceUID": [STUDY, STUDY + "9"], "SeriesInstanceUID": SERIES},
            "StudyInstanceUID",
            "only in the key of the retrieve level",
        ),
        (Root.PATIENT, Level.PATIENT, {"PatientID": ["P1", "P2"]}, "PatientID", "single value"),
        (Root.PATIENT, Level.PATIENT, {"PatientID": "P*"}, "PatientID", "wildcards"),
        (Root.STUDY, Level.STUDY, {"StudyInstanceUID": "1.2.3.*"}, "StudyInstanceUID", "wildcards"),
        (
            Root.STUDY,
            Level.STUDY,
            {"StudyInstanceUID": "1.02.3"},
            "StudyInstanceUID",
            "not a valid UID",
        ),
        (
            Root.STUDY,
            Level.STUDY,
            {"StudyInstanceUID": "1." + "2" * 70},
            "StudyInstanceUID",
            "not a valid UID",
        ),
        (
            Root.STUDY,
            Level.STUDY,
            {"StudyInstanceUID": "../../etc"},
            "StudyInstanceUID",
            "not a valid UID",
        ),
        (
            Root.STUDY,
            Level.PATIENT,
            {"PatientID": "P1"},
            "QueryRetrieveLevel",
            "not a level of the study root",
        ),
        (
            Root.STUDY,
            Level.STUDY,
            {"StudyInstanceUID": ""},
            "StudyInstanceUID",
            "needs this unique key",
        ),
    ],
)
def test_bad_retrieve_identifier_is_refused_naming_attribute_and_rule(
    root: Root, level: Level, keys: dict[str, object], attribute: str, rule: str
) -> None:
    with pytest.raises(InvalidIdentifier) as info:
        build_retrieve_identifier(root, level, keys)  # type: ignore[arg-type]
    assert info.value.attribute == attribute
    assert rule in info.value.rule


def test_retrieve_identifier_without_level_is_refused() -> None:
    ds = Dataset()
    ds.StudyInstanceUID = STUDY
    with pytest.raises(InvalidIdentifier, match="QueryRetrieveLevel: is required"):
        validate_retrieve_identifier(ds, Root.STUDY)
    ds.QueryRetrieveLevel = "FRAME"
    with pytest.raises(InvalidIdentifier, match="not one of PATIENT"):
        validate_retrieve_identifier(ds, Root.STUDY)


def test_query_identifier_gets_the_usual_return_keys_per_level() -> None:
    study = build_query_identifier(Root.STUDY, Level.STUDY, {"PatientID": "P1"})
    for keyword in ("StudyInstanceUID", "StudyDate", "ModalitiesInStudy", "PatientName"):
        assert keyword in study and study[keyword].value in (None, "", [])
    assert study.PatientID == "P1"
    image = build_query_identifier(
        Root.STUDY, Level.IMAGE, {"StudyInstanceUID": STUDY, "SeriesInstanceUID": SERIES}
    )
    assert {"SOPInstanceUID", "SOPClassUID", "InstanceNumber"} <= {e.keyword for e in image}
    bare = build_query_identifier(
        Root.STUDY, Level.STUDY, {}, ["StudyInstanceUID"], default_return_keys=False
    )
    assert [e.keyword for e in bare] == ["QueryRetrieveLevel", "StudyInstanceUID"]


def test_query_matching_forms_are_accepted() -> None:
    ds = build_query_identifier(
        Root.STUDY,
        Level.STUDY,
        {
            "PatientName": "Mü*",
            "StudyDate": "20200101-20211231",
            "StudyTime": "0800-",
            "StudyInstanceUID": [STUDY, STUDY + "2"],
            "AccessionNumber": "AC?1",
        },
    )
    assert ds.SpecificCharacterSet == "ISO_IR 192"  # added for the non-ASCII name
    assert list(ds.StudyInstanceUID) == [STUDY, STUDY + "2"]


@pytest.mark.parametrize(
    ("root", "level", "matching", "attribute", "rule"),
    [
        (Root.STUDY, Level.SERIES, {"Modality": "CT"}, "StudyInstanceUID", "exactly one value"),
        (
            Root.STUDY,
            Level.IMAGE,
            {"StudyInstanceUID": STUDY},
            "SeriesInstanceUID",
            "exactly one value",
        ),
        (Root.PATIENT, Level.STUDY, {"PatientID": "P*"}, "PatientID", "no wildcards"),
        (
            Root.STUDY,
            Level.SERIES,
            {"StudyInstanceUID": [STUDY, STUDY + "1"]},
            "StudyInstanceUID",
            "exactly one value",
        ),
        (
            Root.STUDY,
            Level.STUDY,
            {"SOPInstanceUID": IMAGE},
            "SOPInstanceUID",
            "below a STUDY-level query",
        ),
        (
            Root.PATIENT,
            Level.STUDY,
            {"PatientID": "P1", "PatientName": "X"},
            "PatientName",
            "only the unique key of a higher level",
        ),
        (Root.STUDY, Level.STUDY, {"StudyDate": "20201301"}, "StudyDate", "not a valid DA"),
        (
            Root.STUDY,
            Level.STUDY,
            {"StudyDate": "20211231-20200101"},
            "StudyDate",
            "ends before it starts",
        ),
        (Root.STUDY, Level.STUDY, {"StudyTime": "250000"}, "StudyTime", "not a valid TM"),
        (
            Root.STUDY,
            Level.STUDY,
            {"StudyInstanceUID": "1.2.x"},
            "StudyInstanceUID",
            "not a valid UID",
        ),
        (
            Root.STUDY,
            Level.STUDY,
            {"AccessionNumber": ["A1", "A2"]},
            "AccessionNumber",
            "only for UIDs",
        ),
    ],
)
def test_bad_query_identifier_is_refused_naming_attribute_and_rule(
    root: Root, level: Level, matching: dict[str, object], attribute: str, rule: str
) -> None:
    with pytest.raises(InvalidIdentifier) as info:
        build_query_identifier(root, level, matching)  # type: ignore[arg-type]
    assert info.value.attribute == attribute
    assert rule in info.value.rule


def test_unknown_attribute_in_a_query_is_refused() -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.add_new(0x00091001, "LO", "private")
    with pytest.raises(InvalidIdentifier, match="not an attribute of the DICOM data dictionary"):
        validate_query_identifier(ds, Root.STUDY)


def test_keys_parse_like_findscu() -> None:
    assert parse_key("PatientID=123") == ("PatientID", "123")
    assert parse_key("(0010,0020)=123") == ("PatientID", "123")
    assert parse_key("0008,0061") == ("ModalitiesInStudy", None)
    assert parse_key("StudyDate=") == ("StudyDate", "")
    with pytest.raises(InvalidIdentifier, match="not a keyword"):
        parse_key("PatientNmae=X")
    with pytest.raises(InvalidIdentifier, match="not a tag"):
        parse_key("(0009,1001)=X")
