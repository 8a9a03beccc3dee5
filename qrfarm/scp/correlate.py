"""Which job an incoming instance belongs to.

In order: the Move Originator AE Title and Message ID the PACS copied from
the C-MOVE (exact); else the instance's UIDs against the running moves of
the PACS it came from (study, series or SOP UIDs of the move's identifier,
and the instances expected from an IMAGE-level find). Nothing matched: an
orphan, stored and recorded all the same.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from qrfarm.jobs.recording import InstanceFacts, Match
from qrfarm.models import ExpectedInstance, Job, JobKind, JobState, MatchedBy, MoveMessageId, utcnow

from .known_nodes import KnownNode

# A move's instances may still arrive while it is being reconciled.
_RECEIVING = (JobState.RUNNING, JobState.RECONCILING)


def correlate(
    session: Session, facts: InstanceFacts, nodes: list[KnownNode], late_window_s: float
) -> list[Match]:
    node_ids = {n.id for n in nodes}
    by_originator = _by_originator(session, facts, node_ids, late_window_s)
    if by_originator is not None:
        return [by_originator]
    return _by_uids(session, facts, node_ids)


def _by_originator(
    session: Session, facts: InstanceFacts, node_ids: set[int], late_window_s: float
) -> Match | None:
    if not facts.originator_ae or not facts.originator_message_id:
        return None
    row = session.get(MoveMessageId, (facts.originator_ae, facts.originator_message_id))
    if row is None:
        return None
    cutoff = utcnow() - dt.timedelta(seconds=late_window_s)
    if row.released_at is not None and row.released_at < cutoff:
        return None
    node_id = session.scalar(select(Job.node_id).where(Job.id == row.job_id))
    # An originator naming a move of another PACS is a wrong originator (some
    # SCPs put their own AE title there): fall back to the UIDs.
    if node_id not in node_ids:
        return None
    return Match(row.job_id, MatchedBy.ORIGINATOR)


def _by_uids(session: Session, facts: InstanceFacts, node_ids: set[int]) -> list[Match]:
    if not node_ids:
        return []
    jobs = session.execute(
        select(Job.id, Job.level, Job.identifier).where(
            Job.kind == JobKind.MOVE, Job.node_id.in_(node_ids), Job.state.in_(_RECEIVING)
        )
    ).all()
    if not jobs:
        return []
    expecting = set(
        session.scalars(
            select(ExpectedInstance.job_id).where(
                ExpectedInstance.sop_instance_uid == facts.sop_instance_uid,
                ExpectedInstance.job_id.in_([j.id for j in jobs]),
            )
        )
    )
    return [
        Match(job_id, MatchedBy.UIDS)
        for job_id, level, identifier in jobs
        if job_id in expecting or covers(level, identifier, facts)
    ]


def _values(identifier: dict[str, Any], tag: str) -> list[str]:
    element = identifier.get(tag) or {}
    return [str(v) for v in element.get("Value", []) if v]


def covers(level: str, identifier: dict[str, Any], facts: InstanceFacts) -> bool:
    """Whether a move's retrieve identifier (DICOM JSON) asks for this instance."""
    checks = {
        "PATIENT": ("00100020", facts.patient_id),
        "STUDY": ("0020000D", facts.study_instance_uid),
        "SERIES": ("0020000E", facts.series_instance_uid),
        "IMAGE": ("00080018", facts.sop_instance_uid),
    }
    order = ["PATIENT", "STUDY", "SERIES", "IMAGE"]
    if level not in checks:
        return False
    for name in order[: order.index(level) + 1]:
        tag, value = checks[name]
        wanted = _values(identifier, tag)
        if wanted and value not in wanted:
            return False
    tag, _ = checks[level]
    return bool(_values(identifier, tag))
