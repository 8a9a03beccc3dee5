"""Prefetching a patient's prior studies by a rule, as child jobs of one prefetch.

A prefetch goes ``searching → moving → completed | partial | failed``:

1. searching: one STUDY-level find job per node of the rule, in the rule's
   order;
2. when they have all ended, the priors are picked from their answers (a
   study found on several nodes is taken from the first): the rule's
   modalities and body parts, not older than its limit, newest first, at most
   its number of studies, never the study being ordered. A study already fully
   held (as many distinct instances recorded as the PACS says it has) is
   skipped; each other one gets a STUDY-level move job;
3. when the moves have ended, the prefetch's state sums theirs.

The scheduler advances prefetches (:func:`advance_all`); each step is one
transaction on a locked prefetch row, and the jobs it makes are sent after
the commit (the sweeper sends any a crash left unsent).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.dicom import Level
from qrfarm.errors import PermanentError
from qrfarm.models import (
    PREFETCH_ENDED,
    FindResult,
    Job,
    JobKind,
    JobState,
    NodeRecord,
    Prefetch,
    PrefetchRule,
    PrefetchState,
    ReceivedInstance,
    utcnow,
)

from .dispatch import Dispatcher
from .notify import notify_prefetch_ended, validate_callback_url
from .states import ENDED
from .submit import JobRequest, SubmitRules, UnknownNode, new_job, send_jobs

RETURN_KEYS = (
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedInstances",
)


class NoSuchPrefetch(PermanentError, LookupError):
    """No prefetch has that id."""


class NoSuchRule(PermanentError, LookupError):
    """No prefetch rule of that name is stored."""


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


# --- stored rules ------------------------------------------------------------


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


# --- starting ----------------------------------------------------------------


@dataclass(frozen=True)
class PrefetchRequest:
    patient_id: str
    rule: Rule
    rule_name: str | None = None
    current_accession: str | None = None
    current_study_uid: str | None = None
    callback_url: str | None = None
    external_reference: str | None = None


def _find_request(node: str, patient_id: str) -> JobRequest:
    return JobRequest(
        JobKind.FIND,
        node,
        Level.STUDY,
        keys={"PatientID": patient_id},
        return_keys=RETURN_KEYS,
    )


def start(
    sessions: sessionmaker[Session],
    request: PrefetchRequest,
    dispatcher: Dispatcher,
    rules: SubmitRules,
) -> int:
    """Record a prefetch and its find jobs, then send them; returns its id.

    With an ``external_reference`` already used, that prefetch is returned.
    """
    # The patient ID is matched exactly: a wildcard would fetch other patients.
    if any(c in request.patient_id for c in "*?\\"):
        raise PermanentError(f"patient_id {request.patient_id!r}: wildcards are not allowed")
    if request.callback_url is not None:
        validate_callback_url(
            request.callback_url,
            check_target=rules.check_target,
            secret_configured=rules.webhooks_enabled,
        )
    try:
        with sessions() as session, session.begin():
            existing = _existing(session, request.external_reference)
            if existing is not None:
                return existing
            prefetch = Prefetch(
                patient_id=request.patient_id,
                rule_name=request.rule_name,
                rule=request.rule.model_dump(),
                current_accession=request.current_accession,
                current_study_uid=request.current_study_uid,
                state=PrefetchState.SEARCHING,
                callback_url=request.callback_url,
                external_reference=request.external_reference,
                selected=[],
            )
            session.add(prefetch)
            session.flush()
            job_ids = [
                new_job(
                    session, _find_request(node, request.patient_id), rules, prefetch_id=prefetch.id
                ).id
                for node in request.rule.nodes
            ]
            prefetch_id = prefetch.id
    except IntegrityError:
        with sessions() as session:
            existing = _existing(session, request.external_reference)
        if existing is None:
            raise
        return existing
    send_jobs(sessions, dispatcher, job_ids)
    return prefetch_id


def _existing(session: Session, reference: str | None) -> int | None:
    if not reference:
        return None
    return session.scalar(select(Prefetch.id).where(Prefetch.external_reference == reference))


# --- advancing ---------------------------------------------------------------


def _first(answer: dict[str, Any], tag: str) -> str | None:
    values = answer.get(tag, {}).get("Value") or []
    return str(values[0]) if values and values[0] is not None else None


def _all(answer: dict[str, Any], tag: str) -> list[str]:
    return [str(v) for v in answer.get(tag, {}).get("Value") or [] if v is not None]


# DICOM JSON is keyed by tag.
STUDY_UID, STUDY_DATE, STUDY_TIME = "0020000D", "00080020", "00080030"
ACCESSION, DESCRIPTION, MODALITIES = "00080050", "00081030", "00080061"
INSTANCES = "00201208"


def _candidate(answer: dict[str, Any], node: str) -> dict[str, Any] | None:
    uid = _first(answer, STUDY_UID)
    if not uid:
        return None
    instances = _first(answer, INSTANCES)
    return {
        "study_instance_uid": uid,
        "node": node,
        "study_date": _first(answer, STUDY_DATE),
        "study_time": _first(answer, STUDY_TIME),
        "accession_number": _first(answer, ACCESSION),
        "description": _first(answer, DESCRIPTION),
        "modalities": _all(answer, MODALITIES),
        "instances": int(instances) if instances and instances.isdigit() else None,
    }


def pick_priors(
    prefetch: Prefetch, rule: Rule, answers: list[tuple[str, list[dict[str, Any]]]], today: dt.date
) -> list[dict[str, Any]]:
    """The studies the rule wants from the nodes' answers (in the rule's node order)."""
    found: dict[str, dict[str, Any]] = {}
    for node, node_answers in answers:
        for answer in node_answers:
            candidate = _candidate(answer, node)
            if candidate and candidate["study_instance_uid"] not in found:
                found[candidate["study_instance_uid"]] = candidate
    oldest = (
        (today - dt.timedelta(days=rule.max_age_days)).strftime("%Y%m%d")
        if rule.max_age_days
        else None
    )

    def wanted(study: dict[str, Any]) -> bool:
        if study["study_instance_uid"] == prefetch.current_study_uid:
            return False
        if prefetch.current_accession and study["accession_number"] == prefetch.current_accession:
            return False
        if rule.modalities and not {m.upper() for m in study["modalities"]} & set(rule.modalities):
            return False
        if rule.body_parts:
            text = (study["description"] or "").lower()
            if not any(part.lower() in text for part in rule.body_parts):
                return False
        return oldest is None or (study["study_date"] or "") >= oldest

    priors = sorted(
        filter(wanted, found.values()),
        key=lambda s: (s["study_date"] or "", s["study_time"] or ""),
        reverse=True,
    )
    return priors[: rule.max_studies]


def held_instances(session: Session, study_uid: str) -> int:
    return (
        session.scalar(
            select(func.count(func.distinct(ReceivedInstance.sop_instance_uid))).where(
                ReceivedInstance.study_instance_uid == study_uid
            )
        )
        or 0
    )


def _children(session: Session, prefetch_id: int) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.prefetch_id == prefetch_id).order_by(Job.id)))


def _choose(session: Session, prefetch: Prefetch, rules: SubmitRules) -> list[int]:
    """Searching is over: pick the priors and make their move jobs."""
    rule = Rule.model_validate(prefetch.rule)
    finds = [j for j in _children(session, prefetch.id) if j.kind is JobKind.FIND]
    node_names = dict(session.execute(select(NodeRecord.id, NodeRecord.name)).tuples().all())
    failed = [j for j in finds if j.state is not JobState.COMPLETED]
    if finds and len(failed) == len(finds):
        _end(
            session,
            prefetch,
            PrefetchState.FAILED,
            "; ".join(
                f"find on {node_names.get(j.node_id)}: {j.error or j.state.value}" for j in failed
            ),
        )
        return []
    if failed:
        prefetch.error = "; ".join(
            f"find on {node_names.get(j.node_id)} {j.state.value}: {j.error}" for j in failed
        )
    answers = [
        (
            node_names[j.node_id],
            list(
                session.scalars(
                    select(FindResult.dataset)
                    .where(FindResult.job_id == j.id)
                    .order_by(FindResult.sequence)
                )
            ),
        )
        for j in finds
        if j.state is JobState.COMPLETED
    ]
    priors = pick_priors(prefetch, rule, answers, utcnow().date())
    job_ids = []
    for study in priors:
        held = held_instances(session, study["study_instance_uid"])
        study["held_before"] = held
        study["already_held"] = bool(study["instances"]) and held >= study["instances"]
        if not study["already_held"]:
            job = new_job(
                session,
                JobRequest(
                    JobKind.MOVE,
                    study["node"],
                    Level.STUDY,
                    keys={"StudyInstanceUID": study["study_instance_uid"]},
                ),
                rules,
                prefetch_id=prefetch.id,
            )
            study["job_id"] = job.id
            job_ids.append(job.id)
    prefetch.selected = priors
    if job_ids:
        prefetch.state = PrefetchState.MOVING
    else:
        _finish(session, prefetch)
    return job_ids


def _finish(session: Session, prefetch: Prefetch) -> None:
    """The moves have ended: the prefetch's state sums theirs."""
    moves = [j for j in _children(session, prefetch.id) if j.kind is JobKind.MOVE]
    states = {j.state for j in moves}
    if moves and states == {JobState.CANCELLED}:
        state = PrefetchState.CANCELLED
    elif moves and states <= {JobState.FAILED, JobState.CANCELLED}:
        state = PrefetchState.FAILED
    elif states <= {JobState.COMPLETED} and not prefetch.error:
        state = PrefetchState.COMPLETED
    else:
        state = PrefetchState.PARTIAL
    problems = [
        f"move job {j.id} {j.state.value}" for j in moves if j.state is not JobState.COMPLETED
    ]
    error = "; ".join(filter(None, [prefetch.error, *problems])) or None
    _end(session, prefetch, state, error)


def _end(session: Session, prefetch: Prefetch, state: PrefetchState, error: str | None) -> None:
    prefetch.state = state
    prefetch.error = error
    prefetch.ended_at = utcnow()
    session.flush()
    notify_prefetch_ended(session, prefetch, prefetch_summary(session, prefetch.id))


def advance(session: Session, prefetch: Prefetch, rules: SubmitRules) -> list[int]:
    """One step of a prefetch whose children allow it; the jobs to send after commit."""
    children = _children(session, prefetch.id)
    if prefetch.state is PrefetchState.SEARCHING:
        finds = [j for j in children if j.kind is JobKind.FIND]
        if all(j.state in ENDED for j in finds):
            return _choose(session, prefetch, rules)
    elif prefetch.state is PrefetchState.MOVING:
        moves = [j for j in children if j.kind is JobKind.MOVE]
        if all(j.state in ENDED for j in moves):
            _finish(session, prefetch)
    return []


def advance_all(
    sessions: sessionmaker[Session], dispatcher: Dispatcher, rules: SubmitRules
) -> list[int]:
    """Advance every prefetch under way; the ids of those that changed state."""
    changed: list[int] = []
    to_send: list[int] = []
    with sessions() as session, session.begin():
        for prefetch in session.scalars(
            select(Prefetch)
            .where(Prefetch.state.in_([PrefetchState.SEARCHING, PrefetchState.MOVING]))
            .order_by(Prefetch.id)
            .with_for_update(skip_locked=True)
        ):
            before = prefetch.state
            try:
                with session.begin_nested():
                    to_send += advance(session, prefetch, rules)
            except PermanentError as exc:
                # A node removed or no longer allowed since the prefetch began.
                _end(session, prefetch, PrefetchState.FAILED, str(exc))
            if prefetch.state is not before:
                changed.append(prefetch.id)
    send_jobs(sessions, dispatcher, to_send)
    return changed


# --- reading -----------------------------------------------------------------


def prefetch_summary(session: Session, prefetch_id: int) -> dict[str, Any]:
    prefetch = session.get(Prefetch, prefetch_id)
    if prefetch is None:
        raise NoSuchPrefetch(f"prefetch {prefetch_id} does not exist")
    node_names = dict(session.execute(select(NodeRecord.id, NodeRecord.name)).tuples().all())
    children = _children(session, prefetch.id)
    moves = [j for j in children if j.kind is JobKind.MOVE]
    return {
        "id": prefetch.id,
        "patient_id": prefetch.patient_id,
        "rule_name": prefetch.rule_name,
        "rule": prefetch.rule,
        "state": prefetch.state.value,
        "ended": prefetch.state in PREFETCH_ENDED,
        "current_accession": prefetch.current_accession,
        "current_study_uid": prefetch.current_study_uid,
        "external_reference": prefetch.external_reference,
        "selected": prefetch.selected,
        "studies": {
            "selected": len(prefetch.selected),
            "already_held": sum(1 for s in prefetch.selected if s.get("already_held")),
            "moved": sum(1 for j in moves if j.state is JobState.COMPLETED),
        },
        "recorded": sum(j.recorded_count for j in moves),
        "jobs": [
            {
                "id": j.id,
                "kind": j.kind.value,
                "node": node_names.get(j.node_id),
                "state": j.state.value,
                "recorded": j.recorded_count,
            }
            for j in children
        ],
        "error": prefetch.error,
        "created_at": prefetch.created_at.isoformat(),
        "ended_at": prefetch.ended_at.isoformat() if prefetch.ended_at else None,
    }


__all__ = [
    "NoSuchPrefetch",
    "NoSuchRule",
    "PrefetchRequest",
    "Rule",
    "UnknownNode",
    "advance",
    "advance_all",
    "delete_rule",
    "list_rules",
    "load_rule",
    "pick_priors",
    "prefetch_summary",
    "save_rule",
    "start",
]
