"""Which of a patient's identifiers a node is asked with, and which answers are taken back.

Shown: a node with an issuer gets the identifier of that authority only (by
namespace ID or universal ID, any case), none when the patient has none of
it or two different ones; a node without an issuer gets the patient's one
identifier, but not a pick among several; an answer of another patient ID or
another authority is not the patient's; the reasons never quote an ID.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from qrfarm.workflow import identity
from qrfarm.workflow.identity import PatientIdentifier

A = PatientIdentifier(id="PA1", issuer="HOSP_A", universal_id="1.2.3.4")
B = PatientIdentifier(id="PB9", issuer="HOSP_B")
BARE = PatientIdentifier(id="P77")


def answer(patient_id: str | None, issuer: str | None) -> dict[str, Any]:
    ds: dict[str, Any] = {}
    if patient_id is not None:
        ds[identity.PATIENT_ID] = {"vr": "LO", "Value": [patient_id]}
    ds[identity.ISSUER_OF_PATIENT_ID] = {"vr": "LO", **({"Value": [issuer]} if issuer else {})}
    return ds


@pytest.mark.parametrize("issuer", ["HOSP_A", "hosp_a", "1.2.3.4"])
def test_a_node_gets_the_identifier_of_its_own_authority(issuer: str) -> None:
    assert identity.choose([B, A], issuer).identifier == A


def test_a_node_whose_authority_the_patient_has_no_id_of_is_not_searched() -> None:
    choice = identity.choose([A, B], "HOSP_C")
    assert choice.identifier is None
    assert choice.reason == "no patient identifier of its issuer HOSP_C"
    assert "PA1" not in choice.reason and "PB9" not in choice.reason


def test_two_different_ids_of_one_authority_are_not_guessed_between() -> None:
    other = PatientIdentifier(id="PA2", issuer="HOSP_A")
    choice = identity.choose([A, other], "HOSP_A")
    assert choice.identifier is None
    assert choice.reason == "2 different patient identifiers of its issuer HOSP_A"


def test_a_node_without_an_issuer_gets_the_one_identifier_but_no_pick_among_several() -> None:
    assert identity.choose([A], None).identifier == A
    assert identity.choose([BARE], None).identifier == BARE
    choice = identity.choose([A, B], None)
    assert choice.identifier is None
    assert choice.reason is not None and "2 identifiers" in choice.reason


def test_issuer_of_patient_id_is_matched_where_the_node_supports_it() -> None:
    assert identity.find_keys(A, "HOSP_A", match_issuer=True) == (
        {"PatientID": "PA1", "IssuerOfPatientID": "HOSP_A"},
        (),
    )
    # Otherwise asked back, so that the answers can be checked.
    assert identity.find_keys(A, "HOSP_A", match_issuer=False) == (
        {"PatientID": "PA1"},
        ("IssuerOfPatientID",),
    )
    assert identity.find_keys(BARE, None, match_issuer=True)[0] == {"PatientID": "P77"}
    assert [identity.matches_on_issuer(s, None) for s in ("yes", "no", "auto")] == [
        True,
        False,
        False,
    ]
    assert identity.matches_on_issuer("auto", True) is True


def test_an_answer_of_another_authority_or_patient_is_not_taken() -> None:
    assert identity.answer_is_patients(answer("PA1", "HOSP_A"), A, "HOSP_A")
    assert identity.answer_is_patients(answer("PA1", None), A, "HOSP_A")
    assert not identity.answer_is_patients(answer("PA1", "HOSP_X"), A, "HOSP_A")
    assert not identity.answer_is_patients(answer("PA10", "HOSP_A"), A, "HOSP_A")
    # A node without an issuer: the identifier's authority is the one to match.
    assert not identity.answer_is_patients(answer("PA1", "HOSP_X"), A, None)
    assert identity.answer_is_patients(answer("P77", "ANY"), BARE, None)
    assert identity.answers_carry_issuer([answer("PA1", None), answer("PA1", "X")]) is True
    assert identity.answers_carry_issuer([answer("PA1", None)]) is False
    assert identity.answers_carry_issuer([]) is None


@pytest.mark.parametrize("bad", ["PA*", "P?1", "A\\B", " "])
def test_an_identifier_is_one_exact_value(bad: str) -> None:
    with pytest.raises(ValidationError, match="one exact value"):
        PatientIdentifier(id=bad)
