"""Acting on many jobs at once: cancel, retry, re-prioritise every job a filter names.

Each action answers how many jobs it touched and which. Jobs are taken in
chunks, each chunk locked and changed in a transaction of its own, so that
a filter matching 100,000 jobs neither holds one long transaction nor
loads them all at once. A job that changed state between the look-up and
its chunk's lock is judged again under the lock (a job that ended meanwhile
is not cancelled, one retried by someone else meanwhile not retried twice).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.errors import FieldError
from qrfarm.models import ENDED_STATES, BatchRow, Job, JobKind, JobState, NodeRecord

from .control import prepare_retry
from .dispatch import Dispatcher, send_run_jobs
from .priority import HIGHEST, LOWEST
from .states import transition

CHUNK = 500
# Explicit ids a filter may name at most (a console's selection, not a list of the farm).
MAX_JOB_IDS = 10_000
RETRIABLE = (JobState.PARTIAL, JobState.FAILED)
WAITING = (JobState.QUEUED,)
LIVE = (JobState.QUEUED, JobState.RUNNING, JobState.RECONCILING)


@dataclass(frozen=True)
class JobFilter:
    """Which jobs an action is for: every field given must hold (all None: refused)."""

    node: str | None = None
    state: JobState | None = None
    kind: JobKind | None = None
    batch_id: int | None = None
    created_after: dt.datetime | None = None  # naive UTC, inclusive
    created_before: dt.datetime | None = None  # naive UTC, exclusive
    job_ids: tuple[int, ...] | None = None

    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in self.__dataclass_fields__)

    def describe(self) -> str:
        """The filter as text, for the audit trail (no patient data in it)."""
        parts = []
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, tuple):
                shown = ",".join(map(str, value[:20])) + (" ..." if len(value) > 20 else "")
                parts.append(f"{name}={shown}")
            elif isinstance(value, dt.datetime):
                parts.append(f"{name}={value.isoformat()}Z")
            else:
                parts.append(f"{name}={getattr(value, 'value', value)}")
        return " ".join(parts)

    def query(self) -> Select[Any]:
        if self.is_empty():
            raise FieldError(
                ["body"],
                "a bulk action needs at least one of node, state, kind, batch_id, "
                "created_after, created_before, job_ids (an empty filter would take every job)",
            )
        if self.job_ids is not None and len(self.job_ids) > MAX_JOB_IDS:
            raise FieldError(["body", "job_ids"], f"at most {MAX_JOB_IDS} job ids")
        query = select(Job.id)
        if self.node is not None:
            query = query.join(NodeRecord, NodeRecord.id == Job.node_id).where(
                NodeRecord.name == self.node
            )
        if self.state is not None:
            query = query.where(Job.state == self.state)
        if self.kind is not None:
            query = query.where(Job.kind == self.kind)
        if self.batch_id is not None:
            # Its move jobs, and every job of its retrievals (their moves are
            # made later, by the scheduler, and name only their retrieval).
            retrievals = select(BatchRow.retrieval_id).where(
                BatchRow.batch_id == self.batch_id, BatchRow.retrieval_id.is_not(None)
            )
            query = query.where(
                or_(Job.batch_id == self.batch_id, Job.retrieval_id.in_(retrievals))
            )
        if self.created_after is not None:
            query = query.where(Job.created_at >= self.created_after)
        if self.created_before is not None:
            query = query.where(Job.created_at < self.created_before)
        if self.job_ids is not None:
            query = query.where(Job.id.in_(self.job_ids))
        return query.order_by(Job.id)


@dataclass
class BulkResult:
    """How many jobs an action touched, and their ids (ascending)."""

    touched: int = 0
    job_ids: list[int] = field(default_factory=list)

    def add(self, job_id: int) -> None:
        self.touched += 1
        self.job_ids.append(job_id)


def _chunks(
    sessions: sessionmaker[Session], flt: JobFilter, states: tuple[JobState, ...]
) -> Iterator[list[int]]:
    """The ids of matching jobs in these states, a chunk at a time, by ascending id
    (each chunk read after the previous one was changed and committed)."""
    after = 0
    base = flt.query().where(Job.state.in_(states))
    while True:
        with sessions() as session:
            ids: list[int] = list(session.scalars(base.where(Job.id > after).limit(CHUNK)))
        if not ids:
            return
        yield ids
        after = ids[-1]


def _locked(session: Session, ids: list[int]) -> list[tuple[Job, str]]:
    rows = session.execute(
        select(Job, NodeRecord.name)
        .join(NodeRecord, NodeRecord.id == Job.node_id)
        .where(Job.id.in_(ids))
        .order_by(Job.id)
        .with_for_update(of=Job)
    ).all()
    return [(job, name) for job, name in rows]


def cancel(sessions: sessionmaker[Session], flt: JobFilter) -> BulkResult:
    """Cancel every matching job not yet ended: a queued one ends at once, a
    running one gets C-CANCEL from its worker (as a single cancel does)."""
    result = BulkResult()
    for ids in _chunks(sessions, flt, LIVE):
        with sessions() as session, session.begin():
            for job, _ in _locked(session, ids):
                if job.state in ENDED_STATES or job.cancel_requested:
                    continue
                job.cancel_requested = True
                if job.state is JobState.QUEUED:
                    transition(job, JobState.CANCELLED, error="cancelled before it ran")
                result.add(job.id)
    return result


def retry(
    sessions: sessionmaker[Session], flt: JobFilter, dispatcher: Dispatcher, max_attempts: int
) -> BulkResult:
    """Send every matching partial or failed job back to the queue, as a single
    retry does (a partial retrieve asks only for what is missing)."""
    result = BulkResult()
    for ids in _chunks(sessions, flt, RETRIABLE):
        sends: list[tuple[int, str, int]] = []
        with sessions() as session, session.begin():
            for job, node_name in _locked(session, ids):
                if job.state not in RETRIABLE:
                    continue
                prepare_retry(job, max_attempts)
                sends.append((job.id, node_name, job.priority))
                result.add(job.id)
        send_run_jobs(sessions, dispatcher, sends)
    return result


def reprioritise(
    sessions: sessionmaker[Session], flt: JobFilter, priority: int, dispatcher: Dispatcher
) -> BulkResult:
    """Give every matching job not yet ended this priority. Queued ones are sent
    again in their new lane (the message in the old lane finds the job taken,
    or runs it first: the claim lets one attempt run either way); a held one
    stays held, a bulk one made urgent is no longer held by a window."""
    if not LOWEST <= priority <= HIGHEST:
        raise FieldError(["body", "priority"], f"a priority is from {LOWEST} to {HIGHEST}")
    result = BulkResult()
    for ids in _chunks(sessions, flt, LIVE):
        sends: list[tuple[int, str, int]] = []
        with sessions() as session, session.begin():
            for job, node_name in _locked(session, ids):
                if job.state in ENDED_STATES or job.priority == priority:
                    continue
                job.priority = priority
                result.add(job.id)
                if job.state is JobState.QUEUED:
                    _judge_again(job)
                    if job.next_attempt_at is None:
                        sends.append((job.id, node_name, priority))
        send_run_jobs(sessions, dispatcher, sends)
    return result


def _judge_again(job: Job) -> None:
    """A held job (a window, a cap, a not_before) is made due now: the claim
    judges it again by its new priority, and holds it again if it must."""
    if job.wait_reason is not None and job.next_attempt_at is not None:
        job.next_attempt_at = None
        job.wait_reason = None
