"""What the console's pages show beyond one job's summary: counts over the farm,
a node's use and recent errors, orphans by sender and study, recent prefetches
and HL7 messages. Read-only queries; no patient data leaves them but what the
pages show to a signed-in reader (a prefetch's patient key, as the API does)."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from qrfarm.jobs.dispatch import broker_keys, node_queue
from qrfarm.models import (
    Attempt,
    AuditEvent,
    Job,
    JobState,
    NodeRecord,
    OrphanInstance,
    Prefetch,
    ReceivedInstance,
    utcnow,
)

HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)


def jobs_by_node_and_state(session: Session) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = defaultdict(dict)
    for name, state, count in session.execute(
        select(NodeRecord.name, Job.state, func.count())
        .join(NodeRecord, NodeRecord.id == Job.node_id)
        .group_by(NodeRecord.name, Job.state)
    ):
        table[name][state.value] = count
    for name in session.scalars(select(NodeRecord.name)):
        table.setdefault(name, {})
    return dict(sorted(table.items()))


def throughput(session: Session, span: dt.timedelta = HOUR) -> dict[str, float]:
    """Instances a second and MB a second recorded over ``span`` up to now."""
    since = utcnow() - span
    count, size = session.execute(
        select(func.count(), func.coalesce(func.sum(ReceivedInstance.size), 0)).where(
            ReceivedInstance.received_at >= since
        )
    ).one()
    seconds = span.total_seconds()
    return {
        "instances": int(count),
        "bytes": int(size),
        "instances_per_s": count / seconds,
        "mb_per_s": int(size) / 1e6 / seconds,
    }


def ended_badly(
    session: Session, span: dt.timedelta = DAY, limit: int = 50
) -> list[dict[str, Any]]:
    """Failed and partial jobs that ended within ``span``, newest first."""
    since = utcnow() - span
    rows = session.execute(
        select(Job.id, Job.kind, Job.state, NodeRecord.name, Job.error, Job.ended_at)
        .join(NodeRecord, NodeRecord.id == Job.node_id)
        .where(Job.state.in_([JobState.FAILED, JobState.PARTIAL]), Job.ended_at >= since)
        .order_by(Job.ended_at.desc())
        .limit(limit)
    )
    return [
        {
            "id": r.id,
            "kind": r.kind.value,
            "state": r.state.value,
            "node": r.name,
            "error": r.error,
            "ended_at": r.ended_at,
        }
        for r in rows
    ]


def node_use(session: Session) -> dict[str, dict[str, int]]:
    """Per node: jobs waiting in the queue of record, and jobs running now with a live
    lease (each holds one of the node's association permits while it runs)."""
    now = utcnow()
    use: dict[str, dict[str, int]] = {
        name: {"limit": limit, "queued": 0, "in_use": 0}
        for name, limit in session.execute(select(NodeRecord.name, NodeRecord.max_associations))
    }
    for name, count in session.execute(
        select(NodeRecord.name, func.count())
        .select_from(Job)
        .join(NodeRecord, NodeRecord.id == Job.node_id)
        .where(Job.state == JobState.QUEUED)
        .group_by(NodeRecord.name)
    ):
        use[name]["queued"] = count
    for name, count in session.execute(
        select(NodeRecord.name, func.count())
        .select_from(Job)
        .join(NodeRecord, NodeRecord.id == Job.node_id)
        .where(Job.state == JobState.RUNNING, Job.lease_expires_at > now)
        .group_by(NodeRecord.name)
    ):
        use[name]["in_use"] = count
    return dict(sorted(use.items()))


def workers_seen(session: Session, span: dt.timedelta = HOUR) -> list[dict[str, Any]]:
    """Workers that started an attempt within ``span``: their last start, running jobs."""
    since = utcnow() - span
    now = utcnow()
    running = dict(
        session.execute(
            select(Job.lease_owner, func.count())
            .where(Job.state == JobState.RUNNING, Job.lease_expires_at > now)
            .group_by(Job.lease_owner)
        ).all()
    )
    return [
        {"worker": worker, "last_start": last, "attempts": count, "running": running.get(worker, 0)}
        for worker, last, count in session.execute(
            select(Attempt.worker, func.max(Attempt.started_at), func.count())
            .where(Attempt.started_at >= since, Attempt.worker.is_not(None))
            .group_by(Attempt.worker)
            .order_by(func.max(Attempt.started_at).desc())
        )
    ]


def recent_errors(session: Session, node: str, limit: int = 10) -> list[dict[str, Any]]:
    """The latest attempts at the node's jobs that ended with an error."""
    rows = session.execute(
        select(Attempt.job_id, Attempt.number, Attempt.ended_at, Attempt.outcome, Attempt.error)
        .join(Job, Job.id == Attempt.job_id)
        .join(NodeRecord, NodeRecord.id == Job.node_id)
        .where(NodeRecord.name == node, Attempt.error.is_not(None))
        .order_by(Attempt.id.desc())
        .limit(limit)
    )
    return [dict(r._mapping) for r in rows]


def orphan_groups(session: Session, limit: int = 200) -> list[dict[str, Any]]:
    """Orphans not given to any job, by calling AE title and study, with their reasons."""
    rows = session.execute(
        select(
            OrphanInstance.calling_ae,
            OrphanInstance.study_instance_uid,
            func.count(),
            func.coalesce(func.sum(OrphanInstance.size), 0),
            func.min(OrphanInstance.received_at),
            func.max(OrphanInstance.received_at),
            func.max(OrphanInstance.refusal),
            func.max(OrphanInstance.claimed_job_id),
        )
        .where(OrphanInstance.matched_job_id.is_(None))
        .group_by(OrphanInstance.calling_ae, OrphanInstance.study_instance_uid)
        .order_by(func.max(OrphanInstance.received_at).desc())
        .limit(limit)
    )
    return [
        {
            "calling_ae": ae,
            "study_uid": study,
            "count": count,
            "bytes": int(size),
            "first": first,
            "last": last,
            "reason": refusal
            or (
                f"claimed job {claimed} but lies outside what it asked for"
                if claimed
                else "matched no running or recent move (no originator, UIDs of no move)"
            ),
        }
        for ae, study, count, size, first, last, refusal, claimed in rows
    ]


def recent_prefetches(session: Session, limit: int = 20) -> list[dict[str, Any]]:
    prefetches = session.scalars(select(Prefetch).order_by(Prefetch.id.desc()).limit(limit)).all()
    children: dict[int, list[dict[str, Any]]] = defaultdict(list)
    if prefetches:
        for job_id, prefetch_id, kind, state in session.execute(
            select(Job.id, Job.prefetch_id, Job.kind, Job.state)
            .where(Job.prefetch_id.in_([p.id for p in prefetches]))
            .order_by(Job.id)
        ):
            if prefetch_id is None:
                continue
            children[prefetch_id].append({"id": job_id, "kind": kind.value, "state": state.value})
    return [
        {
            "id": p.id,
            "rule": p.rule_name,
            "state": p.state.value,
            "priors": list(p.selected or []),
            "jobs": children.get(p.id, []),
            "error": p.error,
            "created_at": p.created_at,
            "ended_at": p.ended_at,
        }
        for p in prefetches
    ]


def hl7_messages(session: Session, limit: int = 30) -> list[dict[str, Any]]:
    """HL7 messages as the listener recorded them in the audit trail: sender, outcome
    (the ACK it answered: success AA, refused AR, failed AE), what it said."""
    ack = {"success": "AA", "refused": "AR", "failed": "AE"}
    rows = session.scalars(
        select(AuditEvent)
        .where(AuditEvent.actor_kind == "hl7")
        .order_by(AuditEvent.id.desc())
        .limit(limit)
    )
    return [
        {
            "at": r.at,
            "sender": r.actor,
            "source": r.source,
            "action": r.action,
            "ack": ack.get(r.outcome, r.outcome),
            "detail": r.detail,
        }
        for r in rows
    ]


def broker_depth(redis_url: str | None, nodes: list[str]) -> dict[str, int] | None:
    """Messages waiting in each node's broker queue (every priority lane), when the
    broker is Redis; None otherwise or while it cannot be read."""
    if not redis_url or not redis_url.startswith(("redis://", "rediss://")):
        return None
    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return {
            name: sum(int(client.llen(key)) for key in broker_keys(node_queue(name)))
            for name in nodes
        }
    except redis.RedisError:
        return None
    finally:
        client.close()
