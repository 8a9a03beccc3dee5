"""Rule conditions on an order's fields and values taken from it, as data in the rule.

Shown: a condition names a field by meaning or by HL7 place and holds for
any_of / none_of values regardless of case (an empty field is none of them);
a rule with an unknown field, a condition with no test, or an order control
that cannot start a prefetch is refused naming what is wrong; the ordered
modality and body part replace the rule's own, and a value that is not a
modality code is refused.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from qrfarm.errors import InvalidRule
from qrfarm.workflow import orders
from qrfarm.workflow.rules import Rule

ORDER = {"PV1-2": "I", "MSH-4": "NORTH", "OBR-24": "mr", "OBR-15.4": "KNEE"}


def lookup(place: str) -> str | None:
    return ORDER.get(place)


def test_a_rule_that_skips_inpatient_orders() -> None:
    rule = Rule(nodes=["a"], when=[{"field": "patient_class", "none_of": ["i"]}])
    assert orders.skipped_by(rule, lookup) == (
        "not prefetched: the rule wants patient_class is none of i"
    )
    assert orders.skipped_by(rule, {"PV1-2": "O"}.get) is None
    assert orders.skipped_by(rule, {}.get) is None  # no patient class: not inpatient


def test_conditions_by_place_and_by_name_all_must_hold() -> None:
    rule = Rule(
        nodes=["a"],
        when=[
            {"field": "sending_facility", "any_of": ["NORTH", "SOUTH"]},
            {"field": "OBR-24", "any_of": ["MR"]},
        ],
    )
    assert orders.skipped_by(rule, lookup) is None
    assert orders.skipped_by(rule, {**ORDER, "MSH-4": "WEST"}.get) is not None
    # any_of is not met by an empty field.
    assert orders.skipped_by(rule, {"MSH-4": "NORTH"}.get) is not None


@pytest.mark.parametrize(
    ("definition", "complaint"),
    [
        ({"when": [{"field": "ward", "any_of": ["A"]}]}, "'ward' is not a field"),
        ({"when": [{"field": "PV1-2"}]}, "give any_of or none_of"),
        ({"when": [{"field": "PV1-2", "any_of": ["I"], "none_of": ["O"]}]}, "give any_of"),
        ({"order_controls": ["CA"]}, "'CA' cannot start a prefetch"),
        ({"modality_from": "OBR-0"}, "'OBR-0' is not a field"),
        ({"when": [{"field": "PV1-2", "any_of": ["I"], "extra": 1}]}, "Extra inputs"),
    ],
)
def test_a_bad_rule_is_refused_naming_what_is_wrong(
    definition: dict[str, object], complaint: str
) -> None:
    with pytest.raises(ValidationError, match=complaint):
        Rule.model_validate({"nodes": ["a"], **definition})


def test_the_ordered_modality_and_body_part_select_the_priors() -> None:
    rule = Rule(
        nodes=["a"], modalities=["CT"], modality_from="modality", body_part_from="body_part"
    )
    chosen = orders.selection(rule, lookup)
    assert (chosen.modalities, chosen.body_parts) == (["MR"], ["KNEE"])
    # Not in the order: the rule's own.
    assert orders.selection(rule, {}.get).modalities == ["CT"]
    with pytest.raises(InvalidRule, match="not a modality code"):
        orders.selection(rule, {"OBR-24": "M R;DROP"}.get)
