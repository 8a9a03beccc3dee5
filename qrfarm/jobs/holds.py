"""Why a queued job may not start yet: its ``not_before``, its node's bulk
window, its node's cap on retrieves a minute.

A held job is a queued row with ``next_attempt_at`` at the time it may start
and ``wait_reason`` saying why: the scheduler sends it when that time comes
(as it does a retry), and the claim looks again before it runs. Urgent work
is never held by a window or a cap; a ``not_before`` holds any job.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from qrfarm.models import Attempt, Job, JobKind, NodeRecord
from qrfarm.nodes.windows import is_open, next_open, parse_windows, zone

from .priority import is_bulk, is_urgent

CAP_PERIOD = dt.timedelta(minutes=1)
RETRIEVES = (JobKind.MOVE, JobKind.GET)


@dataclass(frozen=True)
class Hold:
    until: dt.datetime  # naive UTC
    reason: str


def _stamp(moment: dt.datetime) -> str:
    return moment.replace(microsecond=0).isoformat() + "Z"


def window_hold(job: Job, node: NodeRecord, now: dt.datetime) -> Hold | None:
    if not is_bulk(job.priority) or not node.bulk_windows:
        return None
    windows = parse_windows(node.bulk_windows)
    tz = zone(node.timezone)
    if is_open(windows, tz, now):
        return None
    until = next_open(windows, tz, now)
    return Hold(
        until,
        f"bulk work waits for a window of node {node.name} "
        f"({'; '.join(node.bulk_windows)}, {tz.key}): the next opens at {_stamp(until)}",
    )


def cap_hold(session: Session, job: Job, node: NodeRecord, now: dt.datetime) -> Hold | None:
    """The node's cap on retrieves started in the last minute; the caller holds
    the node's row locked, so that two claims do not both take the last slot."""
    cap = node.retrieves_per_minute
    if not cap or job.kind not in RETRIEVES:
        return None
    starts = list(
        session.scalars(
            select(Attempt.started_at)
            .join(Job, Job.id == Attempt.job_id)
            .where(
                Job.node_id == node.id,
                Job.kind.in_(RETRIEVES),
                Attempt.started_at > now - CAP_PERIOD,
                Attempt.started_at <= now,
                # A wait for an association permit started no retrieve.
                Attempt.outcome.is_distinct_from("node busy"),
            )
            .order_by(Attempt.started_at)
        )
    )
    if len(starts) < cap:
        return None
    until = starts[len(starts) - cap] + CAP_PERIOD
    return Hold(
        until,
        f"node {node.name} takes at most {cap} retrieve(s) a minute: "
        f"the next may start at {_stamp(until)}",
    )


def hold_for(
    session: Session, job: Job, node: NodeRecord, now: dt.datetime, *, starting: bool
) -> Hold | None:
    """Why ``job`` may not start at ``now``, or None. ``starting``: a worker is
    about to run it (the cap counts starts, so it is checked only then)."""
    if job.not_before is not None and job.not_before > now:
        return Hold(job.not_before, f"not before {_stamp(job.not_before)} (the job's not_before)")
    if is_urgent(job.priority):
        return None
    hold = window_hold(job, node, now)
    if hold is None and starting:
        hold = cap_hold(session, job, node, now)
    return hold


def lock_node_if_capped(session: Session, node_id: int) -> NodeRecord:
    """The job's node; locked while a claim counts its starts, when it has a cap."""
    node = session.get_one(NodeRecord, node_id)
    if node.retrieves_per_minute:
        session.execute(select(NodeRecord.id).where(NodeRecord.id == node_id).with_for_update())
    return node


def apply(job: Job, hold: Hold, now: dt.datetime) -> None:
    """Hold the queued job: the scheduler sends it at ``hold.until``."""
    job.next_attempt_at = hold.until
    job.wait_reason = hold.reason[:255]
    # Stamped now, so that it counts as dispatched before its next attempt
    # (the sweeper's test for a due job) and is not sent again meanwhile.
    job.dispatched_at = now
