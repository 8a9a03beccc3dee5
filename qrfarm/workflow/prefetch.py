"""Prefetching a patient's prior studies by a rule, as child jobs of one prefetch.

A prefetch goes ``searching → [detailing →] moving → completed | partial |
failed``:

1. searching: one STUDY-level find job per node of the rule, in the rule's
   order;
2. detailing, only where needed: a PACS that leaves ModalitiesInStudy out of
   its STUDY-level answers (DCMTK's dcmqrscp) gets a SERIES-level find per
   candidate study, for the modalities a rule that names some must know;
3. then the priors are picked (:mod:`qrfarm.workflow.priors`): a study found on
   several nodes is taken from the first; the rule's modalities and body
   parts, not older than its limit, newest first, at most its number of
   studies, never the study being ordered. A study already fully held is
   skipped (as many distinct instances recorded as the PACS says it has, or,
   where it does not say, a whole-study retrieve of it ended completed);
   each other one gets a STUDY-level move job;
4. when the moves have ended, the prefetch's state sums theirs.

The scheduler advances prefetches (:func:`advance_all`); each step is one
transaction on a locked prefetch row, and the jobs it makes are sent after
the commit (the sweeper sends any a crash left unsent).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.dicom import Level
from qrfarm.errors import (
    InvalidCallback,
    InvalidIdentifier,
    ResentWithOtherContent,
)
from qrfarm.jobs.dispatch import Dispatcher
from qrfarm.jobs.submit import JobRequest, SubmitRules, new_job, send_jobs
from qrfarm.models import (
    ENDED_STATES,
    FindResult,
    Job,
    JobKind,
    JobState,
    Prefetch,
    PrefetchState,
    utcnow,
)
from qrfarm.nodes.roles import resolve_destination
from qrfarm.notify.outbox import notify_prefetch_ended
from qrfarm.notify.targets import validate_callback_url

from . import parents, patient_finds, priors
from .holdings import already_held
from .identity import PatientIdentifier
from .prefetch_summary import child_jobs, node_names_by_id, prefetch_summary
from .rules import Rule

# --- starting ----------------------------------------------------------------


# External references of prefetches the HL7 listener starts ("hl7:" sender
# ":" control ID); no API caller may use one.
HL7_REFERENCE_PREFIX = "hl7:"


@dataclass(frozen=True)
class PrefetchRequest:
    patient_id: str
    rule: Rule
    rule_name: str | None = None
    current_accession: str | None = None
    current_study_uid: str | None = None
    callback_url: str | None = None
    external_reference: str | None = None
    # A digest of the message that asked (an HL7 order): the same reference
    # again must come with the same digest.
    trigger_digest: str | None = None
    # Every identifier of the patient with its authority (HL7 PID-3 whole);
    # empty: ``patient_id`` alone, its authority not said.
    identifiers: tuple[PatientIdentifier, ...] = ()
    # The order it is for (qrfarm.workflow.orders): XO, CA and DC find it by this.
    order_key: str | None = None


def start(
    sessions: sessionmaker[Session],
    request: PrefetchRequest,
    dispatcher: Dispatcher,
    rules: SubmitRules,
) -> int:
    """Record a prefetch and its find jobs, then send them; returns its id.

    With an ``external_reference`` already used, that prefetch is returned,
    unless its trigger digest differs (ResentWithOtherContent).
    """
    # The patient ID is matched exactly: a wildcard would fetch other patients.
    if any(c in request.patient_id for c in "*?\\"):
        raise InvalidIdentifier(
            "PatientID", "wildcards are not allowed: a prefetch is for one patient"
        )
    if request.callback_url is None and request.rule.callback_url is not None:
        # An order's prefetch (HL7) has no caller to name one: the rule does.
        request = replace(request, callback_url=request.rule.callback_url)
    if request.callback_url is not None:
        validate_callback_url(
            request.callback_url,
            allowed_hosts=rules.webhook_hosts,
            secret_configured=rules.webhooks_enabled,
        )
        if request.rule.webhook_patient_keys and not request.callback_url.startswith("https://"):
            raise InvalidCallback(
                request.callback_url,
                "the rule puts patient keys in the webhook (webhook_patient_keys):"
                " the callback must be https",
            )
    try:
        with sessions() as session, session.begin():
            existing = _existing(session, request)
            if existing is not None:
                return existing
            # A destination that cannot be sent to is refused now, not when
            # the priors are chosen.
            resolve_destination(
                session, request.rule.destination, rules.default_destination, field="rule"
            )
            prefetch = Prefetch(
                patient_id=request.patient_id,
                rule_name=request.rule_name,
                rule=request.rule.model_dump(),
                current_accession=request.current_accession,
                current_study_uid=request.current_study_uid,
                state=PrefetchState.SEARCHING,
                callback_url=request.callback_url,
                external_reference=request.external_reference,
                trigger_digest=request.trigger_digest,
                selected=[],
                patient_identifiers=[i.model_dump() for i in request.identifiers]
                or [PatientIdentifier(id=request.patient_id).model_dump()],
                order_key=request.order_key,
            )
            session.add(prefetch)
            session.flush()
            job_ids = patient_finds.start_finds(session, prefetch, request.rule.nodes, rules)
            if not job_ids:
                # No node holds an identifier of this patient: said, not guessed.
                reasons = "; ".join(f"{n}: {r}" for n, r in prefetch.node_notes.items())
                _end(session, prefetch, PrefetchState.FAILED, f"no node searched ({reasons})")
            prefetch_id = prefetch.id
    except IntegrityError:
        with sessions() as session:
            existing = _existing(session, request)
        if existing is None:
            raise
        return existing
    send_jobs(sessions, dispatcher, job_ids)
    return prefetch_id


def _existing(session: Session, request: PrefetchRequest) -> int | None:
    reference = request.external_reference
    if not reference:
        return None
    row = session.execute(
        select(Prefetch.id, Prefetch.trigger_digest).where(Prefetch.external_reference == reference)
    ).first()
    if row is None:
        return None
    if request.trigger_digest is not None and row.trigger_digest != request.trigger_digest:
        raise ResentWithOtherContent(
            f"{reference} was received before with different content (prefetch {row.id}); "
            "a new order needs a new control ID"
        )
    return int(row.id)


# --- advancing ---------------------------------------------------------------


def _answers(session: Session, job_id: int) -> list[dict[str, Any]]:
    return list(
        session.scalars(
            select(FindResult.dataset)
            .where(FindResult.job_id == job_id)
            .order_by(FindResult.sequence)
        )
    )


def _study_finds(session: Session, prefetch: Prefetch) -> list[Job]:
    return [
        j for j in child_jobs(session, prefetch.id, JobKind.FIND) if j.level == Level.STUDY.value
    ]


def _searched(session: Session, prefetch: Prefetch, rules: SubmitRules) -> list[int]:
    """The STUDY-level finds have ended: the candidates, and SERIES-level finds
    for those whose modalities the PACS did not say (when the rule asks)."""
    rule = Rule.model_validate(prefetch.rule)
    finds = _study_finds(session, prefetch)
    node_names = node_names_by_id(session)
    failed = [j for j in finds if j.state is not JobState.COMPLETED]
    problems = [f"find on {node_names.get(j.node_id)} {j.state.value}: {j.error}" for j in failed]
    if len(failed) == len(finds):
        _end(session, prefetch, PrefetchState.FAILED, "; ".join(problems))
        return []
    prefetch.error = "; ".join(problems) or None
    oldest = priors.oldest_date(utcnow().date(), rule.max_age_days)
    candidates = [
        study
        for study in priors.merge(
            (node_names[j.node_id], patient_finds.patient_answers(session, prefetch, j))
            for j in finds
            if j.state is JobState.COMPLETED
        )
        if priors.eligible(
            study,
            current_study_uid=prefetch.current_study_uid,
            current_accession=prefetch.current_accession,
            body_parts=rule.body_parts,
            oldest=oldest,
        )
    ]
    job_ids = []
    if rule.modalities:
        for study in candidates:
            if not study["modalities"]:
                job = new_job(
                    session,
                    JobRequest(
                        JobKind.FIND,
                        study["node"],
                        Level.SERIES,
                        keys={"StudyInstanceUID": study["study_instance_uid"]},
                        return_keys=("Modality",),
                    ),
                    rules,
                    prefetch_id=prefetch.id,
                )
                study["series_job_id"] = job.id
                job_ids.append(job.id)
    prefetch.selected = candidates
    if job_ids:
        prefetch.state = PrefetchState.DETAILING
        return job_ids
    return _choose(session, prefetch, rules)


def _choose(session: Session, prefetch: Prefetch, rules: SubmitRules) -> list[int]:
    """Every candidate's modalities are known: pick the priors, move those not held."""
    rule = Rule.model_validate(prefetch.rule)
    candidates = [dict(study) for study in prefetch.selected]
    for study in candidates:
        series_job = study.pop("series_job_id", None)
        if series_job is not None:
            study["modalities"] = priors.modalities_from_series(_answers(session, series_job))
    chosen = priors.newest(candidates, rule.modalities, rule.max_studies)
    _, destination = resolve_destination(
        session, rule.destination, rules.default_destination, field="rule"
    )
    job_ids = []
    for study in chosen:
        study["already_held"] = already_held(
            session, study, destination.id if destination is not None else None
        )
        if not study["already_held"]:
            job = new_job(
                session,
                JobRequest(
                    JobKind.MOVE,
                    study["node"],
                    Level.STUDY,
                    keys={"StudyInstanceUID": study["study_instance_uid"]},
                    destination=rule.destination,
                ),
                rules,
                prefetch_id=prefetch.id,
            )
            study["job_id"] = job.id
            job_ids.append(job.id)
    prefetch.selected = chosen
    if job_ids:
        prefetch.state = PrefetchState.MOVING
    else:
        _finish(session, prefetch)
    return job_ids


def _finish(session: Session, prefetch: Prefetch) -> None:
    """The moves have ended: the prefetch's state sums theirs."""
    moves = child_jobs(session, prefetch.id, JobKind.MOVE)
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
    if prefetch.state is PrefetchState.SEARCHING:
        waiting_for = _study_finds(session, prefetch)
    elif prefetch.state is PrefetchState.DETAILING:
        waiting_for = child_jobs(session, prefetch.id, JobKind.FIND)
    else:
        waiting_for = child_jobs(session, prefetch.id, JobKind.MOVE)
    if not all(j.state in ENDED_STATES for j in waiting_for):
        return []
    if prefetch.state is PrefetchState.SEARCHING:
        return _searched(session, prefetch, rules)
    if prefetch.state is PrefetchState.DETAILING:
        return _choose(session, prefetch, rules)
    _finish(session, prefetch)
    return []


UNDER_WAY = (PrefetchState.SEARCHING, PrefetchState.DETAILING, PrefetchState.MOVING)


def advance_all(
    sessions: sessionmaker[Session], dispatcher: Dispatcher, rules: SubmitRules
) -> list[int]:
    """Advance every prefetch under way; the ids of those that changed state."""
    return parents.advance_under_way(
        sessions,
        dispatcher,
        Prefetch,
        UNDER_WAY,
        lambda session, row: advance(session, row, rules),
        lambda session, row, error: _end(session, row, PrefetchState.FAILED, error),
    )


__all__ = [
    "PrefetchRequest",
    "advance",
    "advance_all",
    "start",
]
