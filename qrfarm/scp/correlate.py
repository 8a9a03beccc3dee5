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
from qrfarm.jobs.scope import keys_of, outside_move
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
        Job.destination_node_id,
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
# The moves of the sending PACS that may still receive: running,
# reconciling or waiting for a retry (read for each instance: a move that
# has just begun must be seen at once)...
_ACTIVE_MOVES = select(Job.id, Job.level, Job.identifier, Job.expected_count).where(
    Job.kind == JobKind.MOVE,
    Job.node_id.in_(bindparam("node_ids", expanding=True)),
    # A move to another node sends nothing here (qrfarm.delivery verifies it there).
    Job.destination_node_id.is_(None),
    # One IN on state (an index range per state), then the queued ones narrowed.
    Job.state.in_((JobState.RUNNING, JobState.RECONCILING, JobState.QUEUED)),
    or_(
        Job.state != JobState.QUEUED,
        and_(Job.attempt_count > 0, Job.updated_at >= bindparam("cutoff")),
    ),
)
# ...and those ended within the late window (read about once a second: a
# PACS with many moves just ended would otherwise cost them all per instance).
_ENDED_MOVES = select(Job.id, Job.level, Job.identifier, Job.expected_count).where(
    Job.kind == JobKind.MOVE,
    Job.node_id.in_(bindparam("node_ids", expanding=True)),
    Job.state.in_((JobState.COMPLETED, JobState.PARTIAL)),
    Job.ended_at >= bindparam("cutoff"),
    Job.destination_node_id.is_(None),
)
_IS_EXPECTED = select(
    exists().where(
        ExpectedInstance.job_id == bindparam("job_id"),
        ExpectedInstance.sop_instance_uid == bindparam("sop_instance_uid"),
    )
)
_STUDY_TAG = "0020000D"
# Jobs whose late arrivals are still theirs (FAILED and CANCELLED ones are not).
_LATE_STATES = (JobState.COMPLETED, JobState.PARTIAL)


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
    destination_node_id: int | None  # None: the move sends here
    seen_at: float


_Move = tuple[int, str, dict[str, Any], int | None]  # id, level, identifier, expected count


@dataclass(frozen=True)
class _Ended:
    """The ended moves of some nodes, by the study UIDs their identifiers name
    (those naming none, PATIENT-level retrieves, under "")."""

    by_study: dict[str, list[_Move]]
    loaded_at: float

    def of_study(self, study_uid: str) -> list[_Move]:
        return self.by_study.get(study_uid, []) + self.by_study.get("", [])


def _by_study(moves: list[_Move]) -> dict[str, list[_Move]]:
    index: dict[str, list[_Move]] = {}
    for move in moves:
        element = move[2].get(_STUDY_TAG) or {}
        for study in {str(v) for v in element.get("Value", []) if v} or {""}:
            index.setdefault(study, []).append(move)
    return index


class MoveCache:
    """Recent answers to "which move has this Message ID" and "which moves of
    this PACS may still receive", per SCP process.

    The instances of a move all name the same Message ID, so the database is
    asked about a move at most every ``ttl_s`` (a fifth of a second: a move
    cancelled or failed is seen ended that soon, and what its PACS goes on
    sending is an orphan), and the move's expected list is read once. The
    moves of a PACS ended within the late window are read at most about once
    a second (an instance that matches no move reads them again if they are
    older than a tenth of a second): a PACS with many moves just ended costs
    a query a second, not all of them per instance. Running moves are read
    once per transaction: for each instance recorded alone, once for a
    group (every instance of a group arrived before the group's read, and a
    move is running before its C-MOVE is sent, so none is missed).

    An ID is handed out again only after the late window has passed since its
    move ended, and an expected list once known does not change.
    """

    def __init__(self, ttl_s: float = 0.2, receiving_ttl_s: float = 1.0) -> None:
        self.ttl_s = ttl_s
        self.receiving_ttl_s = receiving_ttl_s
        self._moves: dict[tuple[str, int], _MoveOf] = {}
        self._ended: dict[frozenset[int], _Ended] = {}
        # The running moves read in the latest transaction, by node set.
        self._active: tuple[object, dict[frozenset[int], list[_Move]]] = (None, {})
        self._lock = threading.Lock()

    def active(
        self, connection: Connection, node_ids: frozenset[int], cutoff: dt.datetime
    ) -> list[_Move]:
        """The moves of these nodes that may still receive, read once per
        transaction of ``connection``."""
        transaction = connection.get_transaction()
        with self._lock:
            owner, by_nodes = self._active
            if transaction is not None and owner is transaction and node_ids in by_nodes:
                return by_nodes[node_ids]
        rows = connection.execute(_ACTIVE_MOVES, {"node_ids": sorted(node_ids), "cutoff": cutoff})
        moves = [(row.id, row.level, row.identifier, row.expected_count) for row in rows]
        if transaction is not None:
            with self._lock:
                owner, by_nodes = self._active
                if owner is not transaction:
                    by_nodes = {}
                    self._active = (transaction, by_nodes)
                by_nodes[node_ids] = moves
        return moves

    def ended(
        self,
        connection: Connection,
        node_ids: frozenset[int],
        cutoff: dt.datetime,
        study_uid: str,
        max_age_s: float | None = None,
    ) -> list[_Move]:
        """The moves of these nodes ended within the late window that may hold
        an instance of ``study_uid``; read again when older than ``max_age_s``."""
        now = time.monotonic()
        limit = self.receiving_ttl_s if max_age_s is None else max_age_s
        with self._lock:
            cached = self._ended.get(node_ids)
        if cached is None or now - cached.loaded_at >= limit:
            rows = connection.execute(
                _ENDED_MOVES, {"node_ids": sorted(node_ids), "cutoff": cutoff}
            ).all()
            moves = [(row.id, row.level, row.identifier, row.expected_count) for row in rows]
            cached = _Ended(_by_study(moves), now)
            with self._lock:
                if len(self._ended) > 1_000:
                    self._ended.clear()
                self._ended[node_ids] = cached
        return cached.of_study(study_uid)

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
        if cached is not None and cached.job_id == row.job_id and cached.expected is not None:
            expected = cached.expected  # once known, a move's list does not change
        elif row.expected_count:
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
            row.destination_node_id,
            now,
        )
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
    cache: MoveCache | None = None,
) -> Correlation:
    node_ids = frozenset(n.id for n in nodes)
    cutoff = utcnow() - dt.timedelta(seconds=late_window_s)
    cache = cache or MoveCache(ttl_s=0, receiving_ttl_s=0)
    claimed, refusal = _by_originator(connection, facts, node_ids, cutoff, cache)
    if claimed is not None and refusal is None:
        return Correlation([Match(claimed, MatchedBy.ORIGINATOR)])
    matches = _by_uids(connection, facts, node_ids, cutoff, cache)
    if matches:
        return Correlation(matches)
    return Correlation([], claimed_job_id=claimed, refusal=refusal)


def _by_originator(
    connection: Connection,
    facts: InstanceFacts,
    node_ids: frozenset[int],
    cutoff: dt.datetime,
    cache: MoveCache,
) -> tuple[int | None, str | None]:
    """The move the originator names (if any), and why the instance is not
    its own (None: it is)."""
    if not facts.originator_ae or not facts.originator_message_id:
        return None, None
    move = cache.lookup(connection, facts.originator_ae, facts.originator_message_id)
    if move is None:
        return None, None
    if move.released_at is not None and move.released_at < cutoff:
        return move.job_id, "the move it names ended before the late window"
    # An originator naming a move of another PACS is a wrong originator (some
    # SCPs put their own AE title there) or a forged one.
    if move.node_id not in node_ids:
        return move.job_id, "the move it names was sent to another node"
    # A move to another node sends nothing here (qrfarm.delivery verifies it there).
    if move.destination_node_id is not None:
        return move.job_id, "the move it names sends to another node"
    refusal = outside_move(move.level, move.identifier, move.expected, keys_of(facts))
    if refusal is not None:
        return move.job_id, refusal
    if move.state in ENDED_STATES:
        if move.state not in _LATE_STATES:
            return move.job_id, f"the move it names has ended {move.state.value}"
        if move.ended_at is None or move.ended_at < cutoff:
            return move.job_id, "the move it names ended before the late window"
    return move.job_id, None


def _by_uids(
    connection: Connection,
    facts: InstanceFacts,
    node_ids: frozenset[int],
    cutoff: dt.datetime,
    cache: MoveCache,
) -> list[Match]:
    if not node_ids:
        return []
    active = cache.active(connection, node_ids, cutoff)
    study = facts.study_instance_uid
    moves = active + cache.ended(connection, node_ids, cutoff, study)
    matches = _matching(connection, facts, moves)
    if not matches:
        # A move ended since the list was read may be the one: read it again
        # (unless just read), so that orphans stay rare and cheap.
        fresh = active + cache.ended(connection, node_ids, cutoff, study, max_age_s=0.1)
        matches = _matching(connection, facts, fresh)
    return matches


def _matching(
    connection: Connection,
    facts: InstanceFacts,
    moves: list[_Move],
) -> list[Match]:
    """The moves whose identifier holds the instance and, where an IMAGE-level
    find named what to expect, whose list names it."""
    keys = keys_of(facts)
    return [
        Match(job_id, MatchedBy.UIDS)
        for job_id, level, identifier, expected_count in moves
        if outside_move(level, identifier, None, keys) is None
        and (
            not expected_count
            or connection.execute(
                _IS_EXPECTED, {"job_id": job_id, "sop_instance_uid": facts.sop_instance_uid}
            ).scalar()
        )
    ]
