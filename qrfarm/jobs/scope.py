"""What a retrieve asked for: whether an instance lies inside a move's request.

An instance counts for a move only if it lies inside the move's retrieve
identifier (its unique keys from the root down to its level) and, when an
IMAGE-level find named the instances to expect, among those. A Move
Originator naming the move, or UIDs that happen to match, are claims; this
is the check that decides them.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .recording import InstanceFacts

# The unique key of each level, from the top: (level, tag, name).
_KEYS = (
    ("PATIENT", "00100020", "Patient ID"),
    ("STUDY", "0020000D", "Study Instance UID"),
    ("SERIES", "0020000E", "Series Instance UID"),
    ("IMAGE", "00080018", "SOP Instance UID"),
)
_LEVELS = [level for level, _, _ in _KEYS]


@dataclass(frozen=True)
class InstanceKeys:
    """An instance's unique keys; ``patient_id`` None where it is not known
    (an orphan row keeps no Patient ID)."""

    patient_id: str | None
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str

    def value(self, level: str) -> str | None:
        return {
            "PATIENT": self.patient_id,
            "STUDY": self.study_instance_uid,
            "SERIES": self.series_instance_uid,
            "IMAGE": self.sop_instance_uid,
        }[level]


def _values(identifier: dict[str, Any], tag: str) -> list[str]:
    element = identifier.get(tag) or {}
    return [str(v) for v in element.get("Value", []) if v]


def outside_identifier(level: str, identifier: dict[str, Any], keys: InstanceKeys) -> str | None:
    """Why the instance lies outside a retrieve identifier (DICOM JSON); None if inside.

    The UIDs from the study down to the level decide. Patient ID only decides
    a PATIENT-level retrieve: above that level the UIDs are unique on their
    own, and PACS coerce Patient IDs on the way out (to an enterprise ID, or
    padded with spaces that are not significant in LO)."""
    if level not in _LEVELS:
        return f"the move's level {level!r} is not a retrieve level"
    for key_level, tag, name in _KEYS[: _LEVELS.index(level) + 1]:
        if key_level == "PATIENT" and level != "PATIENT":
            continue
        wanted = [v.strip() for v in _values(identifier, tag)]
        value = keys.value(key_level)
        if not wanted:
            if key_level == level:
                return f"the move's identifier has no {name}"
            continue
        if value is None:
            return f"its {name} is not known"
        if value.strip() not in wanted:
            return f"its {name} is not one the move asked for"
    return None


def keys_of(facts: InstanceFacts) -> InstanceKeys:
    """The unique keys an incoming instance names."""
    return InstanceKeys(
        patient_id=facts.patient_id,
        study_instance_uid=facts.study_instance_uid,
        series_instance_uid=facts.series_instance_uid,
        sop_instance_uid=facts.sop_instance_uid,
    )


def outside_move(
    level: str,
    identifier: dict[str, Any],
    expected: Collection[str] | None,
    keys: InstanceKeys,
) -> str | None:
    """Why the instance does not belong to a move; None when it does.

    ``expected``: the SOP Instance UIDs an IMAGE-level find named, or None
    when the move has no such list. An empty list tells nothing (a PACS that
    answers IMAGE-level finds with no match): the identifier decides alone."""
    reason = outside_identifier(level, identifier, keys)
    if reason is None and expected and keys.sop_instance_uid not in expected:
        reason = f"it is not among the {len(expected)} instance(s) the move expects"
    return reason
