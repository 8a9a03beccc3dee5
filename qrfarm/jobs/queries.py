"""Reading jobs back: what a user, the CLI or an API is shown."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from qrfarm.errors import NoSuchJob
from qrfarm.models import (
    Attempt,
    DimseResponse,
    FarmRelay,
    FindResult,
    Job,
    JobKind,
    JobState,
    NodeRecord,
)

from .dispatch import DISPATCH_PENDING_NOTE


def job_outcome(job: Job, node_name: str | None) -> dict[str, Any]:
    """What a job is and how it ended: the core of its summary and of its webhook."""
    return {
        "id": job.id,
        "kind": job.kind.value,
        "state": job.state.value,
        "node": node_name,
        "level": job.level,
        "destination": job.destination,
        "external_reference": job.external_reference,
        "expected": job.expected_count,
        "reported": {
            "completed": job.reported_completed,
            "failed": job.reported_failed,
            "warning": job.reported_warning,
        },
        "recorded": job.recorded_count,
        # A move to a registered node: verified there, not recorded by the farm.
        "destination_node": job.destination_node_id,
        "confirmed": job.confirmed_count,
        "verified_by": job.verified_by,
        "failed_uids": list(job.failed_uids or []),
        "missing_uids": list(job.missing_uids or []),
        "error": job.error,
        "ended_at": job.ended_at.isoformat() if job.ended_at else None,
    }


def job_state(session: Session, job_id: int) -> JobState:
    """Only the job's state: what a waiter polls (one small query)."""
    state = session.scalar(select(Job.state).where(Job.id == job_id))
    if state is None:
        raise NoSuchJob(f"job {job_id} does not exist")
    return state


def job_summary(session: Session, job_id: int, *, responses: bool = True) -> dict[str, Any]:
    """State, counts, progress, attempts with every response, failed and missing UIDs."""
    row = session.execute(
        select(Job, NodeRecord.name)
        .join(NodeRecord, NodeRecord.id == Job.node_id)
        .where(Job.id == job_id)
    ).first()
    if row is None:
        raise NoSuchJob(f"job {job_id} does not exist")
    job, node_name = row
    # Recorded but never handed to the broker (it could not be reached).
    dispatch_pending = job.state is JobState.QUEUED and job.dispatched_at is None
    summary: dict[str, Any] = {
        **job_outcome(job, node_name),
        "root": job.root,
        "identifier": job.identifier,
        "answers": session.scalar(
            select(func.count()).select_from(FindResult).where(FindResult.job_id == job.id)
        )
        if job.kind is JobKind.FIND
        else None,
        "progress": {
            "remaining": job.progress_remaining,
            "completed": job.progress_completed,
            "failed": job.progress_failed,
            "warning": job.progress_warning,
        },
        "attempt_count": job.attempt_count,
        "created_at": job.created_at.isoformat(),
        # The W3C trace id of the job's spans (submit, worker, storage SCP).
        "trace_id": _trace_id(job.trace_parent),
        "dispatch_pending": dispatch_pending,
        "note": DISPATCH_PENDING_NOTE if dispatch_pending else None,
        "priority": job.priority,
        "batch_id": job.batch_id,
        "not_before": job.not_before.isoformat() if job.not_before else None,
        # Why a queued job waits (a bulk window, its not_before, its node's cap).
        "wait_reason": job.wait_reason if job.state is JobState.QUEUED else None,
        "relay": _relay(session, job.id),
    }
    if responses:
        summary["attempts"] = [
            _attempt(session, attempt)
            for attempt in session.scalars(
                select(Attempt).where(Attempt.job_id == job.id).order_by(Attempt.number)
            )
        ]
    return summary


def _relay(session: Session, job_id: int) -> dict[str, Any] | None:
    """A move relayed through the farm: where it goes on to, and the forward
    that takes it there (None until the move has ended). The move itself ends
    on what reached the farm; the forward's own state says what reached the
    destination."""
    row = session.execute(
        select(FarmRelay.forward_job_id, NodeRecord.name)
        .join(NodeRecord, NodeRecord.id == FarmRelay.destination_node_id)
        .where(FarmRelay.move_job_id == job_id)
    ).first()
    if row is None:
        return None
    return {"destination": row.name, "forward": row.forward_job_id}


def _trace_id(trace_parent: str | None) -> str | None:
    """The trace id of a traceparent (version-traceid-spanid-flags), if it has one."""
    parts = (trace_parent or "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def _attempt(session: Session, attempt: Attempt) -> dict[str, Any]:
    rows = session.scalars(
        select(DimseResponse)
        .where(DimseResponse.attempt_id == attempt.id)
        .order_by(DimseResponse.sequence)
    )
    return {
        "number": attempt.number,
        "worker": attempt.worker,
        "message_id": attempt.message_id,
        "started_at": attempt.started_at.isoformat(),
        "ended_at": attempt.ended_at.isoformat() if attempt.ended_at else None,
        "outcome": attempt.outcome,
        "error": attempt.error,
        "responses": [
            {
                "status": f"0x{r.status:04X}",
                "category": r.category,
                "remaining": r.remaining,
                "completed": r.completed,
                "failed": r.failed,
                "warning": r.warning,
                "error_comment": r.error_comment,
                "offending_elements": list(r.offending_elements or []),
                "failed_sop_instance_uids": r.failed_sop_instance_uids,
            }
            for r in rows
        ],
    }


def find_results(session: Session, job_id: int) -> list[dict[str, Any]]:
    return [
        row.dataset
        for row in session.scalars(
            select(FindResult).where(FindResult.job_id == job_id).order_by(FindResult.sequence)
        )
    ]


def list_jobs(
    session: Session, *, state: JobState | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if state is not None:
        query = query.where(Job.state == state)
    return [job_summary(session, job.id, responses=False) for job in session.scalars(query)]
