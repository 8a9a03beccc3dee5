"""Choosing prior studies from C-FIND answers: pure functions, no database.

The answers are DICOM JSON (keyed by tag). A PACS may leave out
ModalitiesInStudy and NumberOfStudyRelatedInstances at the STUDY level
(DCMTK's dcmqrscp does): a candidate then has no modalities until a
SERIES-level find fills them in, and no instance count.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

STUDY_UID, STUDY_DATE, STUDY_TIME = "0020000D", "00080020", "00080030"
ACCESSION, DESCRIPTION, MODALITIES = "00080050", "00081030", "00080061"
MODALITY, INSTANCES = "00080060", "00201208"


def first(answer: dict[str, Any], tag: str) -> str | None:
    values = answer.get(tag, {}).get("Value") or []
    return str(values[0]) if values and values[0] is not None else None


def every(answer: dict[str, Any], tag: str) -> list[str]:
    return [str(v) for v in answer.get(tag, {}).get("Value") or [] if v is not None]


def candidate(answer: dict[str, Any], node: str) -> dict[str, Any] | None:
    """A STUDY-level answer as a candidate prior; None without a Study Instance UID."""
    uid = first(answer, STUDY_UID)
    if not uid:
        return None
    instances = first(answer, INSTANCES)
    return {
        "study_instance_uid": uid,
        "node": node,
        "study_date": first(answer, STUDY_DATE),
        "study_time": first(answer, STUDY_TIME),
        "accession_number": first(answer, ACCESSION),
        "description": first(answer, DESCRIPTION),
        "modalities": sorted({m.upper() for m in every(answer, MODALITIES)}),
        "instances": int(instances) if instances and instances.isdigit() else None,
    }


def merge(answers: Iterable[tuple[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Candidates from each node's answers, in the rule's node order: a study
    found on several nodes is taken from the first."""
    found: dict[str, dict[str, Any]] = {}
    for node, node_answers in answers:
        for answer in node_answers:
            study = candidate(answer, node)
            if study and study["study_instance_uid"] not in found:
                found[study["study_instance_uid"]] = study
    return list(found.values())


def modalities_from_series(answers: Iterable[dict[str, Any]]) -> list[str]:
    return sorted({m.upper() for a in answers for m in every(a, MODALITY)})


def eligible(
    study: dict[str, Any],
    *,
    current_study_uid: str | None,
    current_accession: str | None,
    body_parts: list[str],
    oldest: str | None,
) -> bool:
    """Everything but the modality: not the ordered study, described as a wanted
    body part, not older than the limit."""
    if current_study_uid and study["study_instance_uid"] == current_study_uid:
        return False
    if current_accession and study["accession_number"] == current_accession:
        return False
    if body_parts:
        text = (study["description"] or "").lower()
        if not any(part.lower() in text for part in body_parts):
            return False
    return oldest is None or (study["study_date"] or "") >= oldest


def oldest_date(today: dt.date, max_age_days: int | None) -> str | None:
    if not max_age_days:
        return None
    return (today - dt.timedelta(days=max_age_days)).strftime("%Y%m%d")


def newest(
    studies: Iterable[dict[str, Any]], modalities: list[str], limit: int
) -> list[dict[str, Any]]:
    """The ``limit`` newest studies with one of ``modalities`` (any, when empty)."""
    wanted = set(modalities)
    matching = [s for s in studies if not wanted or wanted & set(s["modalities"])]
    matching.sort(key=lambda s: (s["study_date"] or "", s["study_time"] or ""), reverse=True)
    return matching[:limit]
