"""What a prefetch says of itself (the REST API, its webhook, the console),
and the reads the prefetch life cycle shares with it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from qrfarm.errors import NoSuchPrefetch
from qrfarm.models import PREFETCH_ENDED, Job, JobKind, JobState, NodeRecord, Prefetch

from .rules import Rule


def node_names_by_id(session: Session) -> dict[int, str]:
    return {row.id: row.name for row in session.execute(select(NodeRecord.id, NodeRecord.name))}


def child_jobs(session: Session, prefetch_id: int, kind: JobKind | None = None) -> list[Job]:
    query = select(Job).where(Job.prefetch_id == prefetch_id).order_by(Job.id)
    if kind is not None:
        query = query.where(Job.kind == kind)
    return list(session.scalars(query))


def prefetch_summary(session: Session, prefetch_id: int) -> dict[str, Any]:
    prefetch = session.get(Prefetch, prefetch_id)
    if prefetch is None:
        raise NoSuchPrefetch(f"prefetch {prefetch_id} does not exist")
    node_names = node_names_by_id(session)
    children = child_jobs(session, prefetch.id)
    moves = [j for j in children if j.kind is JobKind.MOVE]
    destination = Rule.model_validate(prefetch.rule).destination
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
        "patient_identifiers": prefetch.patient_identifiers,
        "node_notes": prefetch.node_notes,
        "order_key": prefetch.order_key,
        "selected": prefetch.selected,
        "studies": {
            "selected": len(prefetch.selected),
            "already_held": sum(1 for s in prefetch.selected if s.get("already_held")),
            "moved": sum(1 for j in moves if j.state is JobState.COMPLETED),
        },
        "recorded": sum(j.recorded_count for j in moves),
        # Where the priors went (None: the farm), and how many instances the
        # destination confirmed holding (None: the farm, which records them).
        "destination": destination,
        "delivered": sum(j.confirmed_count or 0 for j in moves) if destination else None,
        "jobs": [
            {
                "id": j.id,
                "kind": j.kind.value,
                "node": node_names.get(j.node_id),
                "state": j.state.value,
                "recorded": j.recorded_count,
                "destination": j.destination if j.destination_node_id is not None else None,
                "confirmed": j.confirmed_count,
                "verified_by": j.verified_by,
            }
            for j in children
        ],
        "error": prefetch.error,
        "created_at": prefetch.created_at.isoformat(),
        "ended_at": prefetch.ended_at.isoformat() if prefetch.ended_at else None,
    }
