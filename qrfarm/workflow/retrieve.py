"""Retrieve by what people have: an accession number, a patient ID and dates, or a study UID.

A retrieval is the parent of its jobs: a STUDY-level find on the node for
what was given, then, once it has ended, one STUDY-level move per study
found, and its state sums theirs (``searching → moving → completed | partial
| failed | cancelled``). Nothing is guessed: no study found ends it failed
saying so; an accession number (or a study UID) on studies of more than one
patient, or a patient ID answered under several issuers, ends it failed
naming the patients by ID, in its error for the caller, never in a log.
Answers that are not what was asked (another accession, patient or issuer:
a PACS matching loosely) are left out before anything is decided.

The scheduler advances retrievals (:func:`advance_all`) as it does prefetches.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.dicom import Level
from qrfarm.dicom.node import validate_ae_title
from qrfarm.errors import InvalidRetrieval, NoSuchRetrieval, UnknownNode
from qrfarm.jobs import control, profiles
from qrfarm.jobs.dispatch import Dispatcher
from qrfarm.jobs.submit import JobRequest, SubmitRules, check_destination, new_job, send_jobs
from qrfarm.models import (
    ENDED_STATES,
    RETRIEVAL_ENDED,
    FindResult,
    Job,
    JobKind,
    JobState,
    NodeRecord,
    Retrieval,
    RetrievalState,
    utcnow,
)

from . import identity, parents
from .identity import PatientIdentifier
from .retrieve_criteria import (
    STUDY_UID,
    RetrieveRequest,
    ambiguity,
    asked_for,
    criteria_of,
    find_request,
    first,
    study_of,
)

UNDER_WAY = (RetrievalState.SEARCHING, RetrievalState.MOVING)
# At most this many studies moved by one retrieval: a patient with more is
# asked again with a narrower date range.
MAX_STUDIES = 500


def start(
    sessions: sessionmaker[Session],
    request: RetrieveRequest,
    dispatcher: Dispatcher,
    rules: SubmitRules,
) -> int:
    """Record a retrieval and its find job, then send it; its id. With an
    ``external_reference`` already used, that retrieval's id."""
    criteria = criteria_of(request)
    destination = validate_ae_title(
        request.destination or rules.default_destination, "move destination"
    )
    with sessions() as session, session.begin():
        if request.external_reference:
            existing = session.scalar(
                select(Retrieval.id).where(
                    Retrieval.external_reference == request.external_reference
                )
            )
            if existing is not None:
                return int(existing)
        node = session.scalar(select(NodeRecord).where(NodeRecord.name == request.node))
        if node is None:
            raise UnknownNode(f"node {request.node!r} is not registered (qrfarm node add)")
        check_destination(session, destination, rules.default_destination)
        issuer = criteria.get("issuer")
        if (
            issuer
            and node.patient_id_issuer
            and not PatientIdentifier(id=criteria["patient_id"], issuer=issuer).of(
                node.patient_id_issuer
            )
        ):
            # The ID of another authority names another person there.
            raise InvalidRetrieval(
                f"node {node.name} holds patient IDs of issuer {node.patient_id_issuer},"
                f" not {issuer}"
            )
        match_issuer = identity.matches_on_issuer(
            node.issuer_matching, profiles.trait(session, node.id, profiles.ANSWERS_ISSUER)
        )
        retrieval = Retrieval(
            node_id=node.id,
            destination=destination,
            priority=request.priority,
            criteria=criteria,
            state=RetrievalState.SEARCHING,
            studies=[],
            external_reference=request.external_reference,
        )
        session.add(retrieval)
        session.flush()
        find_job = replace(find_request(node, criteria, match_issuer), priority=request.priority)
        find = new_job(session, find_job, rules)
        find.retrieval_id = retrieval.id
        retrieval_id, job_ids = retrieval.id, [find.id]
    send_jobs(sessions, dispatcher, job_ids)
    return retrieval_id


# --- advancing ---------------------------------------------------------------


def _searched(session: Session, retrieval: Retrieval, find: Job, rules: SubmitRules) -> list[int]:
    node = session.get_one(NodeRecord, retrieval.node_id)
    if find.state is not JobState.COMPLETED:
        _end(
            session, retrieval, RetrievalState.FAILED, f"the find {find.state.value}: {find.error}"
        )
        return []
    answers = session.scalars(
        select(FindResult.dataset).where(FindResult.job_id == find.id).order_by(FindResult.sequence)
    )
    found: dict[str, dict[str, Any]] = {}
    for answer in answers:
        if asked_for(answer, retrieval.criteria, node) and first(answer, STUDY_UID):
            study = study_of(answer)
            found.setdefault(study["study_instance_uid"], study)
    studies = list(found.values())
    retrieval.studies = studies
    if not studies:
        _end(session, retrieval, RetrievalState.FAILED, f"no study on {node.name} matches")
        return []
    ambiguous = ambiguity(studies, retrieval.criteria)
    if ambiguous:
        _end(session, retrieval, RetrievalState.FAILED, ambiguous)
        return []
    if len(studies) > MAX_STUDIES:
        _end(
            session,
            retrieval,
            RetrievalState.FAILED,
            f"{len(studies)} studies match, more than {MAX_STUDIES}: narrow the date range",
        )
        return []
    job_ids = []
    for study in studies:
        job = new_job(
            session,
            JobRequest(
                JobKind.MOVE,
                node.name,
                Level.STUDY,
                keys={"StudyInstanceUID": study["study_instance_uid"]},
                destination=retrieval.destination,
                priority=retrieval.priority,
            ),
            rules,
        )
        job.retrieval_id = retrieval.id
        study["job_id"] = job.id
        job_ids.append(job.id)
    # A new list: the JSON column notices a new value, not a mutated one.
    retrieval.studies = [dict(s) for s in studies]
    retrieval.state = RetrievalState.MOVING
    return job_ids


def _children(session: Session, retrieval_id: int, kind: JobKind | None = None) -> list[Job]:
    query = select(Job).where(Job.retrieval_id == retrieval_id).order_by(Job.id)
    if kind is not None:
        query = query.where(Job.kind == kind)
    return list(session.scalars(query))


def _finish(session: Session, retrieval: Retrieval) -> None:
    moves = _children(session, retrieval.id, JobKind.MOVE)
    states = {j.state for j in moves}
    if states == {JobState.COMPLETED}:
        state = RetrievalState.COMPLETED
    elif states == {JobState.CANCELLED}:
        state = RetrievalState.CANCELLED
    elif states <= {JobState.FAILED, JobState.CANCELLED}:
        state = RetrievalState.FAILED
    else:
        state = RetrievalState.PARTIAL
    problems = [
        f"move job {j.id} {j.state.value}" for j in moves if j.state is not JobState.COMPLETED
    ]
    _end(session, retrieval, state, "; ".join(problems) or None)


def _end(session: Session, retrieval: Retrieval, state: RetrievalState, error: str | None) -> None:
    retrieval.state = state
    retrieval.error = error
    retrieval.ended_at = utcnow()


def advance(session: Session, retrieval: Retrieval, rules: SubmitRules) -> list[int]:
    """One step of a retrieval whose children allow it; the jobs to send after commit."""
    if retrieval.state is RetrievalState.SEARCHING:
        finds = _children(session, retrieval.id, JobKind.FIND)
        if not finds or any(j.state not in ENDED_STATES for j in finds):
            return []
        return _searched(session, retrieval, finds[0], rules)
    moves = _children(session, retrieval.id, JobKind.MOVE)
    if all(j.state in ENDED_STATES for j in moves):
        _finish(session, retrieval)
    return []


def advance_all(
    sessions: sessionmaker[Session], dispatcher: Dispatcher, rules: SubmitRules
) -> list[int]:
    """Advance every retrieval under way; the ids of those that changed state."""
    return parents.advance_under_way(
        sessions,
        dispatcher,
        Retrieval,
        UNDER_WAY,
        lambda session, row: advance(session, row, rules),
        lambda session, row, error: _end(session, row, RetrievalState.FAILED, error),
    )


def cancel(sessions: sessionmaker[Session], retrieval_id: int) -> RetrievalState:
    """Cancel a retrieval and its jobs (a running move gets C-CANCEL); its state."""
    with sessions() as session, session.begin():
        retrieval = session.get(Retrieval, retrieval_id, with_for_update=True)
        if retrieval is None:
            raise NoSuchRetrieval(f"retrieval {retrieval_id} does not exist")
        if retrieval.state in RETRIEVAL_ENDED:
            return retrieval.state
        _end(session, retrieval, RetrievalState.CANCELLED, "cancelled")
        job_ids = [j.id for j in _children(session, retrieval_id) if j.state not in ENDED_STATES]
    for job_id in job_ids:
        control.cancel(sessions, job_id)
    return RetrievalState.CANCELLED


# --- reading -----------------------------------------------------------------


def summary(session: Session, retrieval_id: int) -> dict[str, Any]:
    retrieval = session.get(Retrieval, retrieval_id)
    if retrieval is None:
        raise NoSuchRetrieval(f"retrieval {retrieval_id} does not exist")
    node = session.get(NodeRecord, retrieval.node_id)
    children = _children(session, retrieval.id)
    moves = [j for j in children if j.kind is JobKind.MOVE]
    return {
        "id": retrieval.id,
        "node": node.name if node is not None else None,
        "destination": retrieval.destination,
        "criteria": retrieval.criteria,
        "state": retrieval.state.value,
        "ended": retrieval.state in RETRIEVAL_ENDED,
        "studies": retrieval.studies,
        "recorded": sum(j.recorded_count for j in moves),
        "jobs": [
            {"id": j.id, "kind": j.kind.value, "state": j.state.value, "recorded": j.recorded_count}
            for j in children
        ],
        "error": retrieval.error,
        "created_at": retrieval.created_at.isoformat(),
        "ended_at": retrieval.ended_at.isoformat() if retrieval.ended_at else None,
    }


def has_ended(session: Session, retrieval_id: int) -> bool:
    state = session.scalar(select(Retrieval.state).where(Retrieval.id == retrieval_id))
    if state is None:
        raise NoSuchRetrieval(f"retrieval {retrieval_id} does not exist")
    return state in RETRIEVAL_ENDED


__all__ = [
    "RetrieveRequest",
    "advance",
    "advance_all",
    "cancel",
    "criteria_of",
    "has_ended",
    "start",
    "summary",
]
