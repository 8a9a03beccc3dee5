"""Prefetch rules: which priors a prefetch fetches, stored by name."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from qrfarm.errors import InvalidRule, NoSuchRule, PermanentError
from qrfarm.models import PrefetchRule

from .conditions import Condition, check_field

# ORC-1 codes a rule may start (or update) a prefetch on; CA and DC always cancel.
STARTING_ORDER_CONTROLS = ("NW", "XO")


class Rule(BaseModel):
    """Which priors a prefetch fetches."""

    model_config = ConfigDict(extra="forbid")

    nodes: list[str] = Field(min_length=1, description="Nodes to search, in order of preference.")
    modalities: list[str] = Field(
        default=[], description="Wanted modalities (any of them in the study); empty: any."
    )
    body_parts: list[str] = Field(
        default=[],
        description="Wanted body parts, matched in the study description; empty: any.",
    )
    max_studies: int = Field(default=3, ge=1, le=100, description="How many priors, newest first.")
    max_age_days: int | None = Field(
        default=None, ge=1, le=36500, description="How far back; unset: no limit."
    )
    destination: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Where the priors are moved: a registered destination node (name or AE"
        " title), verified there; unset: the farm's own storage SCP.",
    )
    when: list[Condition] = Field(
        default=[],
        max_length=20,
        description="Conditions on an HL7 order's fields, all to be met for it to start a"
        " prefetch (e.g. patient_class none_of [I]); an order that does not is acknowledged"
        " and starts nothing.",
    )
    order_controls: list[str] = Field(
        default=["NW"],
        min_length=1,
        description="ORC-1 codes that start or update a prefetch (NW, XO); CA and DC cancel it.",
    )
    modality_from: str | None = Field(
        default=None,
        description="A field whose value (the ordered modality, e.g. modality) replaces"
        " modalities, when the order has one.",
    )
    body_part_from: str | None = Field(
        default=None,
        description="A field whose value (e.g. body_part) replaces body_parts, when the order"
        " has one.",
    )
    callback_url: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        description="Where to POST the prefetch's summary when it ends, for a prefetch"
        " started without a callback of its own (an HL7 order).",
    )
    webhook_patient_keys: bool = Field(
        default=False,
        description="Put the patient ID, accession and chosen studies in the prefetch's"
        " webhook body (an https callback only); otherwise it carries ids, states and counts.",
    )

    @field_validator("nodes", "modalities", "body_parts")
    @classmethod
    def _clean(cls, values: list[str]) -> list[str]:
        cleaned = [v.strip() for v in values]
        if any(not v or len(v) > 64 for v in cleaned):
            raise ValueError("entries must be 1 to 64 characters")
        return cleaned

    @field_validator("modalities")
    @classmethod
    def _modality_codes(cls, values: list[str]) -> list[str]:
        for value in values:
            if not value.isascii() or not value.replace("_", "").isalnum() or len(value) > 16:
                raise ValueError(f"{value!r} is not a modality code (CS, e.g. CT, MR)")
        return [v.upper() for v in values]

    @field_validator("order_controls")
    @classmethod
    def _order_controls(cls, values: list[str]) -> list[str]:
        codes = [v.strip().upper() for v in values]
        for code in codes:
            if code not in STARTING_ORDER_CONTROLS:
                raise ValueError(
                    f"{code!r} cannot start a prefetch: order controls are"
                    f" {' or '.join(STARTING_ORDER_CONTROLS)} (CA and DC always cancel)"
                )
        return codes

    @field_validator("modality_from", "body_part_from")
    @classmethod
    def _field(cls, value: str | None) -> str | None:
        return None if value is None else check_field(value)


MAX_RULE_BYTES = 64 * 1024


def rule_from_json(text: str) -> Rule:
    """A rule written as JSON (a file, a request); InvalidRule naming each field wrong."""
    if len(text.encode("utf-8")) > MAX_RULE_BYTES:
        raise InvalidRule(f"a rule is at most {MAX_RULE_BYTES} bytes of JSON")
    try:
        return Rule.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'rule'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidRule(f"the rule is refused: {problems}") from None


def save_rule(session: Session, name: str, rule: Rule) -> PrefetchRule:
    if not name or len(name) > 64:
        raise PermanentError("a rule name has 1 to 64 characters")
    row = session.scalar(select(PrefetchRule).where(PrefetchRule.name == name))
    if row is None:
        row = PrefetchRule(name=name, definition=rule.model_dump())
        session.add(row)
    else:
        row.definition = rule.model_dump()
    session.flush()
    return row


def load_rule(session: Session, name: str) -> Rule:
    row = session.scalar(select(PrefetchRule).where(PrefetchRule.name == name))
    if row is None:
        raise NoSuchRule(f"no prefetch rule named {name!r}")
    return Rule.model_validate(row.definition)


def list_rules(session: Session) -> dict[str, Rule]:
    rows = session.scalars(select(PrefetchRule).order_by(PrefetchRule.name))
    return {row.name: Rule.model_validate(row.definition) for row in rows}


def delete_rule(session: Session, name: str) -> None:
    row = session.scalar(select(PrefetchRule).where(PrefetchRule.name == name))
    if row is None:
        raise NoSuchRule(f"no prefetch rule named {name!r}")
    session.delete(row)
