"""Conditions on an order's fields, and the fields a rule may name: data in the rule.

A field is named by what it means (``patient_class``) or by its HL7 v2 place
(``PV1-2``, ``OBR-4.2``: segment, field, component). Each name reads the
places where senders put it, the first that has a value: the ordered
modality is IPC-5 in an OMI^O23 and usually OBR-24 in an ORM^O01.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# name -> HL7 places read in turn (SEG-field[.component[.subcomponent]]).
FIELDS: dict[str, tuple[str, ...]] = {
    "sending_application": ("MSH-3",),
    "sending_facility": ("MSH-4",),
    "receiving_application": ("MSH-5",),
    "receiving_facility": ("MSH-6",),
    "message_type": ("MSH-9.1",),
    "trigger_event": ("MSH-9.2",),
    "order_control": ("ORC-1",),
    "order_status": ("ORC-5",),
    "patient_class": ("PV1-2",),
    "assigned_location": ("PV1-3.1",),
    "hospital_service": ("PV1-10",),
    "modality": ("IPC-5", "OBR-24"),
    "procedure_code": ("OBR-4.1",),
    "procedure": ("OBR-4.2",),
    # HL7 2.3-2.6 OBR-15 (specimen source) component 4 is the body site.
    "body_part": ("OBR-15.4", "OBR-15.1"),
    "priority": ("OBR-27.6", "ORC-7.6"),
}
PLACE = re.compile(
    r"^(?P<segment>[A-Z][A-Z0-9]{2})-(?P<field>[1-9][0-9]{0,2})(?:\.(?P<component>[1-9][0-9]?))?(?:\.(?P<sub>[1-9][0-9]?))?$"
)

# A lookup of one HL7 place ("PV1-2") in a message: its value, or None.
Lookup = Callable[[str], str | None]


def check_field(name: str) -> str:
    name = name.strip()
    if name in FIELDS or PLACE.match(name):
        return name
    raise ValueError(
        f"{name!r} is not a field: use one of {', '.join(sorted(FIELDS))},"
        " or an HL7 place such as PV1-2 or OBR-4.2"
    )


def value_of(name: str, lookup: Lookup) -> str | None:
    """The field's value in a message, through ``lookup`` of each of its places."""
    for place in FIELDS.get(name, (name,)):
        value = lookup(place)
        if value:
            return value.strip()
    return None


class Condition(BaseModel):
    """A field and the values it must (``any_of``) or must not (``none_of``) hold;
    compared without regard to case. A field the message leaves empty is none
    of the values."""

    model_config = ConfigDict(extra="forbid")

    field: str = Field(description="A field name (patient_class, modality, ...) or HL7 place.")
    any_of: list[str] = Field(default=[], max_length=100)
    none_of: list[str] = Field(default=[], max_length=100)

    @field_validator("field")
    @classmethod
    def _known(cls, value: str) -> str:
        return check_field(value)

    @field_validator("any_of", "none_of")
    @classmethod
    def _values(cls, values: list[str]) -> list[str]:
        cleaned = [v.strip() for v in values]
        if any(not v or len(v) > 64 for v in cleaned):
            raise ValueError("values must be 1 to 64 characters")
        return cleaned

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        if bool(self.any_of) == bool(self.none_of):
            raise ValueError(f"condition on {self.field}: give any_of or none_of (one of them)")
        return self

    def holds(self, lookup: Lookup) -> bool:
        value = (value_of(self.field, lookup) or "").casefold()
        if self.any_of:
            return bool(value) and value in {v.casefold() for v in self.any_of}
        return value not in {v.casefold() for v in self.none_of}

    def describe(self) -> str:
        if self.any_of:
            return f"{self.field} is one of {', '.join(self.any_of)}"
        return f"{self.field} is none of {', '.join(self.none_of)}"


def first_failed(conditions: list[Condition], lookup: Lookup) -> Condition | None:
    """The first condition the message does not meet; None when all hold."""
    for condition in conditions:
        if not condition.holds(lookup):
            return condition
    return None
