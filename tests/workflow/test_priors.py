"""Picking priors from C-FIND answers: node order, the rule's filters, newest first."""

from __future__ import annotations

import datetime as dt
from typing import Any

from qrfarm.workflow import priors


def answer(
    uid: str, date: str, modalities: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    ds: dict[str, Any] = {
        priors.STUDY_UID: {"vr": "UI", "Value": [uid]},
        priors.STUDY_DATE: {"vr": "DA", "Value": [date]},
        priors.STUDY_TIME: {"vr": "TM", "Value": ["101500"]},
        priors.ACCESSION: {"vr": "SH", "Value": [extra.get("accession", "A" + uid)]},
        priors.DESCRIPTION: {"vr": "LO", "Value": [extra.get("description", "")]},
    }
    if modalities is not None:
        ds[priors.MODALITIES] = {"vr": "CS", "Value": modalities}
    if "instances" in extra:
        ds[priors.INSTANCES] = {"vr": "IS", "Value": [str(extra["instances"])]}
    return ds


def test_a_study_found_on_two_nodes_is_taken_from_the_first_in_rule_order() -> None:
    merged = priors.merge(
        [("a", [answer("1.1", "20250101", ["CT"])]), ("b", [answer("1.1", "20250101", ["CT"])])]
    )
    assert [(s["study_instance_uid"], s["node"]) for s in merged] == [("1.1", "a")]


def test_answers_without_a_study_uid_are_ignored_and_counts_read() -> None:
    no_uid = answer("1.9", "20250101")
    del no_uid[priors.STUDY_UID]
    merged = priors.merge([("a", [no_uid, answer("1.2", "20240101", ["mr"], instances=7)])])
    assert len(merged) == 1
    assert merged[0]["modalities"] == ["MR"]
    assert merged[0]["instances"] == 7


def test_newest_keeps_the_wanted_modality_newest_first_up_to_the_limit() -> None:
    studies = priors.merge(
        [
            (
                "a",
                [
                    answer("1.1", "20200101", ["CT"]),
                    answer("1.2", "20260101", ["CT", "SR"]),
                    answer("1.3", "20250101", ["MR"]),
                    answer("1.4", "20240101", ["CT"]),
                    answer("1.5", "20230101", ["CT"]),
                ],
            )
        ]
    )
    chosen = priors.newest(studies, ["CT"], 3)
    assert [s["study_instance_uid"] for s in chosen] == ["1.2", "1.4", "1.5"]
    assert [s["study_instance_uid"] for s in priors.newest(studies, [], 2)] == ["1.2", "1.3"]


def test_eligible_leaves_out_the_ordered_study_old_studies_and_other_body_parts() -> None:
    [ordered, old, head, chest] = priors.merge(
        [
            (
                "a",
                [
                    answer("1.1", "20260101", ["CT"], accession="ORDER1"),
                    answer("1.2", "20100101", ["CT"], description="CT CHEST"),
                    answer("1.3", "20250101", ["CT"], description="CT HEAD"),
                    answer("1.4", "20250101", ["CT"], description="ct thorax/chest"),
                ],
            )
        ]
    )
    oldest = priors.oldest_date(dt.date(2026, 6, 1), 365 * 5)

    def keeps(study: dict[str, Any], uid: str | None = None) -> bool:
        return priors.eligible(
            study,
            current_study_uid=uid,
            current_accession="ORDER1",
            body_parts=["Chest"],
            oldest=oldest,
        )

    assert not keeps(ordered)
    assert not keeps(old)
    assert not keeps(head)
    assert keeps(chest)
    assert not keeps(chest, uid="1.4")


def test_modalities_of_a_study_come_from_its_series_answers() -> None:
    series = [
        {"00080060": {"vr": "CS", "Value": ["ct"]}},
        {"00080060": {"vr": "CS", "Value": ["SR"]}},
    ]
    assert priors.modalities_from_series(series) == ["CT", "SR"]
