"""Which job an incoming instance belongs to.

In order: the Move Originator AE Title and Message ID the PACS copied from
the C-MOVE (exact); else the instance's UIDs against the running moves of
the PACS it came from (study, series or SOP UIDs of the move's identifier,
and the instances expected from an IMAGE-level find). Nothing matched: an
orphan, stored and recorded all the same.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, exists, select

from qrfarm.jobs.recording import InstanceFacts, Match
from qrfarm.models import ExpectedInstance, Job, JobKind, JobState, MatchedBy, MoveMessageId, utcnow

from .known_nodes import KnownNode

# A move's instances may still arrive while it is being reconciled.
_RECEIVING = (JobState.RUNNING, JobState.RECONCILING)

# Built once: these run for every instance received.
_MOVE_OF = (
    select(MoveMessageId.job_id, MoveMessageId.released_at, Job.node_id)
    .join(Job, Job.id == MoveMessageId.job_id)
    .where(
        MoveMessageId.calling_ae == bindparam("calling_ae"),
        MoveMessageId.message_id == bindparam("message_id"),
    )
)
# The receiving moves of the sending PACS, each with whether an IMAGE-level
# find told it to expect this very instance: one round trip.
_RUNNING_MOVES = select(
    Job.id,
    Job.level,
    Job.identifier,
    exists()
    .where(
        ExpectedInstance.job_id == Job.id,
        ExpectedInstance.sop_instance_uid == bindparam("sop_instance_uid"),
    )
    .label("expected"),
).where(
    Job.kind == JobKind.MOVE,
    Job.node_id.in_(bindparam("node_ids", expanding=True)),
    Job.state.in_(_RECEIVING),
)


@dataclass(frozen=True)
class _MoveOf:
    job_id: int
    node_id: int | None
    released_at: dt.datetime | None
    seen_at: float


class OriginatorCache:
    """Recent answers to "which move has this Message ID": the instances of a
    move all name the same one, so the database is asked about once a move.

    Safe for a few seconds: an ID is handed out again only after the late
    window (an hour by default) has passed since its move ended.
    """

    def __init__(self, ttl_s: float = 2.0) -> None:
        self.ttl_s = ttl_s
        self._moves: dict[tuple[str, int], _MoveOf] = {}
        self._lock = threading.Lock()

    def lookup(self, connection: Connection, ae_title: str, message_id: int) -> _MoveOf | None:
        key = (ae_title, message_id)
        now = time.monotonic()
        with self._lock:
            cached = self._moves.get(key)
        if cached is not None and now - cached.seen_at < self.ttl_s:
            return cached
        row = connection.execute(
            _MOVE_OF, {"calling_ae": ae_title, "message_id": message_id}
        ).first()
        if row is None:
            return None  # not cached: the move may be about to begin
        move = _MoveOf(row.job_id, row.node_id, row.released_at, now)
        with self._lock:
            if len(self._moves) > 10_000:
                self._moves.clear()
            self._moves[key] = move
        return move


def correlate(
    connection: Connection,
    facts: InstanceFacts,
    nodes: list[KnownNode],
    late_window_s: float,
    originators: OriginatorCache | None = None,
) -> list[Match]:
    node_ids = {n.id for n in nodes}
    by_originator = _by_originator(
        connection, facts, node_ids, late_window_s, originators or OriginatorCache(ttl_s=0)
    )
    if by_originator is not None:
        return [by_originator]
    return _by_uids(connection, facts, node_ids)


def _by_originator(
    connection: Connection,
    facts: InstanceFacts,
    node_ids: set[int],
    late_window_s: float,
    originators: OriginatorCache,
) -> Match | None:
    if not facts.originator_ae or not facts.originator_message_id:
        return None
    move = originators.lookup(connection, facts.originator_ae, facts.originator_message_id)
    if move is None:
        return None
    cutoff = utcnow() - dt.timedelta(seconds=late_window_s)
    if move.released_at is not None and move.released_at < cutoff:
        return None
    # An originator naming a move of another PACS is a wrong originator (some
    # SCPs put their own AE title there): fall back to the UIDs.
    if move.node_id not in node_ids:
        return None
    return Match(move.job_id, MatchedBy.ORIGINATOR)


def _by_uids(connection: Connection, facts: InstanceFacts, node_ids: set[int]) -> list[Match]:
    if not node_ids:
        return []
    jobs = connection.execute(
        _RUNNING_MOVES, {"node_ids": sorted(node_ids), "sop_instance_uid": facts.sop_instance_uid}
    ).all()
    return [
        Match(job_id, MatchedBy.UIDS)
        for job_id, level, identifier, expected in jobs
        if expected or covers(level, identifier, facts)
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
