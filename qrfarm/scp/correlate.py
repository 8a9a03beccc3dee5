"""Which job an incoming instance belongs to.

In order: the Move Originator AE Title and Message ID the PACS copied from
the C-MOVE; else the instance's UIDs against the moves of the PACS it came
from that are receiving or in their late window. Either way an instance
counts for a move only if it lies inside what that move asked for
(:mod:`qrfarm.jobs.scope`): an originator is a claim, not a proof. Nothing
matched: an orphan, stored and recorded all the same, naming the move it
claimed and why it was refused.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, bindparam, exists, or_, select

from qrfarm.jobs.recording import Correlation, InstanceFacts, Match
from qrfarm.jobs.scope import InstanceKeys, outside_move
from qrfarm.models import (
    ENDED_STATES,
    ExpectedInstance,
    Job,
    JobKind,
    JobState,
    MatchedBy,
    MoveMessageId,
    utcnow,
)

from .known_nodes import KnownNode

# Built once: these run for every instance received.
_MOVE_OF = (
    select(
        MoveMessageId.job_id,
        MoveMessageId.released_at,
        Job.node_id,
        Job.level,
        Job.identifier,
        Job.expected_count,
        Job.state,
        Job.ended_at,
    )
    .join(Job, Job.id == MoveMessageId.job_id)
    .where(
        MoveMessageId.calling_ae == bindparam("calling_ae"),
        MoveMessageId.message_id == bindparam("message_id"),
    )
)
_EXPECTED_OF = select(ExpectedInstance.sop_instance_uid).where(
    ExpectedInstance.job_id == bindparam("job_id")
)
# The moves of the sending PACS that may still receive: running, reconciling,
# waiting for a retry, or ended within the late window; each with whether an
# IMAGE-level find told it to expect this very instance. One round trip.
_RECEIVING_MOVES = select(
    Job.id,
    Job.level,
    Job.identifier,
    Job.expected_count,
    exists()
    .where(
        ExpectedInstance.job_id == Job.id,
        ExpectedInstance.sop_instance_uid == bindparam("sop_instance_uid"),
    )
    .label("expected"),
).where(
    Job.kind == JobKind.MOVE,
    Job.node_id.in_(bindparam("node_ids", expanding=True)),
    or_(
        Job.state.in_((JobState.RUNNING, JobState.RECONCILING)),
        and_(Job.state == JobState.QUEUED, Job.attempt_count > 0),
        and_(
            Job.state.in_((JobState.COMPLETED, JobState.PARTIAL)),
            Job.ended_at >= bindparam("cutoff"),
        ),
    ),
)


@dataclass(frozen=True)
class _MoveOf:
    job_id: int
    node_id: int | None
    released_at: dt.datetime | None
    level: str
    identifier: dict[str, Any]
    expected: frozenset[str] | None  # None: no expected list (yet)
    state: JobState
    ended_at: dt.datetime | None
    seen_at: float


class OriginatorCache:
    """Recent answers to "which move has this Message ID": the instances of a
    move all name the same one, so the database is asked about once a move,
    and the move's expected list is read once.

    Safe for a few seconds: an ID is handed out again only after the late
    window has passed since its move ended, an expected list once known does
    not change, and a job's end matters only against the late window.
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
        expected = None
        if row.expected_count is not None:
            expected = frozenset(connection.execute(_EXPECTED_OF, {"job_id": row.job_id}).scalars())
        move = _MoveOf(
            row.job_id,
            row.node_id,
            row.released_at,
            row.level,
            row.identifier,
            expected,
            JobState(row.state),
            row.ended_at,
            now,
        )
        with self._lock:
            if len(self._moves) > 10_000:
                self._moves.clear()
            self._moves[key] = move
        return move


def _keys(facts: InstanceFacts) -> InstanceKeys:
    return InstanceKeys(
        patient_id=facts.patient_id,
        study_instance_uid=facts.study_instance_uid,
        series_instance_uid=facts.series_instance_uid,
        sop_instance_uid=facts.sop_instance_uid,
    )


def correlate(
    connection: Connection,
    facts: InstanceFacts,
    nodes: list[KnownNode],
    late_window_s: float,
    originators: OriginatorCache | None = None,
) -> Correlation:
    node_ids = {n.id for n in nodes}
    cutoff = utcnow() - dt.timedelta(seconds=late_window_s)
    claimed, refusal = _by_originator(
        connection, facts, node_ids, cutoff, originators or OriginatorCache(ttl_s=0)
    )
    if claimed is not None and refusal is None:
        return Correlation([Match(claimed, MatchedBy.ORIGINATOR)])
    matches = _by_uids(connection, facts, node_ids, cutoff)
    if matches:
        return Correlation(matches)
    return Correlation([], claimed_job_id=claimed, refusal=refusal)


def _by_originator(
    connection: Connection,
    facts: InstanceFacts,
    node_ids: set[int],
    cutoff: dt.datetime,
    originators: OriginatorCache,
) -> tuple[int | None, str | None]:
    """The move the originator names (if any), and why the instance is not
    its own (None: it is)."""
    if not facts.originator_ae or not facts.originator_message_id:
        return None, None
    move = originators.lookup(connection, facts.originator_ae, facts.originator_message_id)
    if move is None:
        return None, None
    if move.released_at is not None and move.released_at < cutoff:
        return move.job_id, "the move it names ended before the late window"
    # An originator naming a move of another PACS is a wrong originator (some
    # SCPs put their own AE title there) or a forged one.
    if move.node_id not in node_ids:
        return move.job_id, "the move it names was sent to another node"
    refusal = outside_move(move.level, move.identifier, move.expected, _keys(facts))
    if refusal is not None:
        return move.job_id, refusal
    if move.state in ENDED_STATES and (move.ended_at is None or move.ended_at < cutoff):
        return move.job_id, "the move it names ended before the late window"
    return move.job_id, None


def _by_uids(
    connection: Connection, facts: InstanceFacts, node_ids: set[int], cutoff: dt.datetime
) -> list[Match]:
    if not node_ids:
        return []
    jobs = connection.execute(
        _RECEIVING_MOVES,
        {
            "node_ids": sorted(node_ids),
            "sop_instance_uid": facts.sop_instance_uid,
            "cutoff": cutoff,
        },
    ).all()
    keys = _keys(facts)
    return [
        Match(job_id, MatchedBy.UIDS)
        for job_id, level, identifier, expected_count, expected in jobs
        # An expected list known: only what it names; else the identifier decides.
        if outside_move(level, identifier, None, keys) is None
        and (expected_count is None or expected)
    ]
