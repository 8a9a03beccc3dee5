"""A prefetch's STUDY-level finds: each node searched with the patient's identifier
of the node's own authority, and only that patient's answers taken back.

Why a node was not searched, and how many of its answers were left out as
another patient's, is written in the prefetch's ``node_notes`` (no patient
ID in them).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from qrfarm.dicom import Level
from qrfarm.errors import UnknownNode
from qrfarm.jobs import profiles
from qrfarm.jobs.submit import JobRequest, SubmitRules, new_job
from qrfarm.models import FindResult, Job, JobKind, NodeRecord, Prefetch

from . import identity
from .identity import PatientIdentifier

RETURN_KEYS = (
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedInstances",
)


def identifiers_of(prefetch: Prefetch) -> list[PatientIdentifier]:
    """The patient's identifiers; a prefetch from before they were kept has its one ID."""
    if prefetch.patient_identifiers:
        return [PatientIdentifier.model_validate(i) for i in prefetch.patient_identifiers]
    return [PatientIdentifier(id=prefetch.patient_id)]


def _node(session: Session, name: str) -> NodeRecord:
    row = session.scalar(select(NodeRecord).where(NodeRecord.name == name))
    if row is None:
        raise UnknownNode(f"node {name!r} is not registered (qrfarm node add)")
    return row


def start_finds(
    session: Session, prefetch: Prefetch, nodes: list[str], rules: SubmitRules
) -> list[int]:
    """A find job per node that holds an identifier of the patient; the others
    are named in ``node_notes`` with the reason."""
    identifiers = identifiers_of(prefetch)
    notes: dict[str, str] = {}
    job_ids = []
    for name in nodes:
        node = _node(session, name)
        choice = identity.choose(identifiers, node.patient_id_issuer)
        if choice.identifier is None:
            notes[name] = f"not searched: {choice.reason}"
            continue
        match_issuer = identity.matches_on_issuer(
            node.issuer_matching, profiles.trait(session, node.id, profiles.ANSWERS_ISSUER)
        )
        keys, extra = identity.find_keys(choice.identifier, node.patient_id_issuer, match_issuer)
        request = JobRequest(
            JobKind.FIND, name, Level.STUDY, keys=keys, return_keys=(*RETURN_KEYS, *extra)
        )
        job_ids.append(new_job(session, request, rules, prefetch_id=prefetch.id).id)
    prefetch.node_notes = notes
    return job_ids


def patient_answers(session: Session, prefetch: Prefetch, job: Job) -> list[dict[str, Any]]:
    """A node's answers that are the patient's (by ID and issuer); how many were
    not goes into ``node_notes``. Whether the node fills in Issuer of Patient ID
    is learned from them (for issuer matching "auto")."""
    answers = list(
        session.scalars(
            select(FindResult.dataset)
            .where(FindResult.job_id == job.id)
            .order_by(FindResult.sequence)
        )
    )
    node = session.get_one(NodeRecord, job.node_id)
    carries = identity.answers_carry_issuer(answers)
    if carries is not None:
        profiles.observe(session, node.id, profiles.ANSWERS_ISSUER, carries)
    asked = (job.identifier.get(identity.PATIENT_ID, {}).get("Value") or [""])[0]
    known = [i for i in identifiers_of(prefetch) if i.id == asked]
    identifier = known[0] if known else PatientIdentifier(id=asked or prefetch.patient_id)
    kept = [
        a for a in answers if identity.answer_is_patients(a, identifier, node.patient_id_issuer)
    ]
    if len(kept) < len(answers):
        prefetch.node_notes = {
            **prefetch.node_notes,
            node.name: f"{len(answers) - len(kept)} answer(s) of another patient ID or issuer"
            " left out",
        }
    return kept
