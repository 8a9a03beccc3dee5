"""Submitting many jobs at once: one transaction, then one send each.

What a batch, or a test that fills a queue, needs: 1,000 jobs written in one
transaction rather than 1,000, and sent once they are committed.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.models import Job, NodeRecord

from .dispatch import Dispatcher, send_run_jobs
from .submit import JobRequest, SubmitRules, new_job


def add_jobs(session: Session, requests: Sequence[JobRequest], rules: SubmitRules) -> list[int]:
    """Validate and add every request's job to ``session`` (the caller commits);
    the first bad request raises and nothing is kept."""
    with session.no_autoflush:  # one INSERT for them all, not one each
        jobs = [
            new_job(session, request, rules, dispatched=True, flush=False) for request in requests
        ]
    session.flush()
    return [job.id for job in jobs]


def ready_to_send(session: Session, job_ids: Sequence[int]) -> list[tuple[int, str, int]]:
    """The (id, node, priority) of the jobs to send now: held ones wait for the scheduler."""
    rows = session.execute(
        select(Job.id, NodeRecord.name, Job.priority)
        .join(NodeRecord, NodeRecord.id == Job.node_id)
        .where(Job.id.in_(job_ids), Job.next_attempt_at.is_(None))
        .order_by(Job.id)
    ).all()
    return [(job_id, name, priority) for job_id, name, priority in rows]


def submit_many(
    sessions: sessionmaker[Session],
    requests: Sequence[JobRequest],
    dispatcher: Dispatcher,
    rules: SubmitRules,
) -> list[int]:
    """Record every job in one transaction, then send them; their ids, in order."""
    with sessions() as session, session.begin():
        job_ids = add_jobs(session, requests, rules)
        sends = ready_to_send(session, job_ids)
    send_run_jobs(sessions, dispatcher, sends)
    return job_ids
