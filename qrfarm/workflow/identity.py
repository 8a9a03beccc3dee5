"""Patient identity across PACS: which of a patient's identifiers a node is asked with.

A hospital's patient has one ID per assigning authority (the main hospital,
a partner site, the regional archive): HL7 PID-3 lists them all, each with
its authority in CX.4. A node holds the IDs of one authority
(``NodeRecord.patient_id_issuer``). The same ID text under two authorities
names two people, so a node is only ever asked with the identifier of its own
authority, and an answer that says it belongs to another authority (Issuer of
Patient ID, 0010,0021) is left out.

A node that names no authority is asked with the patient's one identifier,
as before authorities were known; but not when the patient has identifiers of
several authorities (which one it holds would be a guess).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

ISSUER_MATCHING = ("auto", "yes", "no")
PATIENT_ID, ISSUER_OF_PATIENT_ID = "00100020", "00100021"


class PatientIdentifier(BaseModel):
    """One of a patient's IDs and the authority that assigned it (None: not said)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=64)
    issuer: str | None = Field(default=None, max_length=64)
    # HL7 CX.4 may name the authority by a universal ID (an OID) as well as
    # by its namespace ID: a node's issuer may be either.
    universal_id: str | None = Field(default=None, max_length=199)

    @field_validator("id")
    @classmethod
    def _exact(cls, value: str) -> str:
        value = value.strip()
        # The patient ID is matched exactly: a wildcard would fetch other patients.
        if not value or any(c in value for c in "*?\\"):
            raise ValueError("a patient ID is one exact value: no wildcards (* ?) or backslash")
        return value

    @field_validator("issuer", "universal_id")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if "\\" in value:
            raise ValueError("an issuer is one value: no backslash")
        return value or None

    def of(self, authority: str) -> bool:
        wanted = authority.strip().casefold()
        return any(
            name is not None and name.casefold() == wanted
            for name in (self.issuer, self.universal_id)
        )


@dataclass(frozen=True)
class Choice:
    """The identifier a node is searched with, or why it is not searched."""

    identifier: PatientIdentifier | None
    reason: str | None = None


def choose(identifiers: Sequence[PatientIdentifier], node_issuer: str | None) -> Choice:
    """The identifier of the node's authority; reasons never quote a patient ID."""
    if node_issuer:
        mine = {i.id: i for i in identifiers if i.of(node_issuer)}
        if len(mine) == 1:
            return Choice(next(iter(mine.values())))
        if not mine:
            return Choice(None, f"no patient identifier of its issuer {node_issuer}")
        return Choice(
            None, f"{len(mine)} different patient identifiers of its issuer {node_issuer}"
        )
    distinct = {i.id for i in identifiers}
    if len(distinct) == 1:
        return Choice(identifiers[0])
    return Choice(
        None,
        f"it names no patient ID issuer and the patient has {len(distinct)} identifiers"
        " (set the node's issuer: qrfarm node add ... --issuer)",
    )


def matches_on_issuer(setting: str, answers_issuer: bool | None) -> bool:
    """Whether a node's C-FIND carries Issuer of Patient ID as a matching key:
    by its setting, or (auto) once it has been seen to answer with one."""
    if setting == "yes":
        return True
    if setting == "no":
        return False
    return bool(answers_issuer)


def find_keys(
    identifier: PatientIdentifier, node_issuer: str | None, match_issuer: bool
) -> tuple[dict[str, str], tuple[str, ...]]:
    """The patient keys of a C-FIND: (matching keys, return keys). Issuer of
    Patient ID is always asked back, so that answers can be checked."""
    keys = {"PatientID": identifier.id}
    if node_issuer and match_issuer:
        keys["IssuerOfPatientID"] = node_issuer
        return keys, ()
    return keys, ("IssuerOfPatientID",)


def _first(answer: dict[str, Any], tag: str) -> str | None:
    values = answer.get(tag, {}).get("Value") or []
    return str(values[0]).strip() if values and values[0] is not None else None


def answer_is_patients(
    answer: dict[str, Any], identifier: PatientIdentifier, node_issuer: str | None
) -> bool:
    """Whether a C-FIND answer (DICOM JSON) is of this patient: an answer of
    another patient ID, or whose Issuer of Patient ID is another authority than
    the node's (or, for a node without one, the identifier's), is not."""
    patient_id = _first(answer, PATIENT_ID)
    if patient_id is not None and patient_id != identifier.id:
        return False
    issuer = _first(answer, ISSUER_OF_PATIENT_ID)
    if not issuer:
        return True
    if node_issuer:
        return issuer.casefold() == node_issuer.strip().casefold()
    if identifier.issuer or identifier.universal_id:
        return identifier.of(issuer)
    return True


def answers_carry_issuer(answers: Iterable[dict[str, Any]]) -> bool | None:
    """Whether a node filled in Issuer of Patient ID; None without answers."""
    seen = None
    for answer in answers:
        if _first(answer, ISSUER_OF_PATIENT_ID):
            return True
        seen = False
    return seen


def validate_issuer_matching(value: str) -> str:
    if value not in ISSUER_MATCHING:
        raise ValueError(f"issuer matching is one of {', '.join(ISSUER_MATCHING)}, not {value!r}")
    return value
