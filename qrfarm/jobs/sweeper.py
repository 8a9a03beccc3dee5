"""The scheduler's sweep: the database is the record of truth, the broker only carries work.

It finds what the broker alone would lose or delay:
* queued jobs that are due (a retry's ``next_attempt_at`` passed) or whose
  message may be lost (dispatched long ago and still queued): sent again;
* running jobs whose lease expired (their worker died): sent again, the
  next claim takes over (and again after a while, should that message be
  lost as well);
* reconciling jobs whose lease expired: finalized here, no DICOM needed;
* C-MOVE Message IDs of attempts that can send no more (their worker died):
  released, so that they name their move only for the late window.
A job sent twice is harmless: the claim lets only one attempt run.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.errors import BrokerUnavailable
from qrfarm.models import Job, JobState, NodeRecord

from .dispatch import RUN_JOB, Dispatcher, node_queue
from .moves import release_lost_message_ids
from .policy import JobPolicy
from .reconcile import finalize

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    dispatched: list[int] = field(default_factory=list)
    finalized: list[int] = field(default_factory=list)
    released_message_ids: int = 0
    # Due, but the broker could not be reached: sent by a later sweep.
    pending: list[int] = field(default_factory=list)


def sweep(
    sessions: sessionmaker[Session], dispatcher: Dispatcher, policy: JobPolicy
) -> SweepReport:
    report = SweepReport()
    now = policy.clock()
    stale = now - dt.timedelta(seconds=policy.redispatch_after_s)
    with sessions() as session, session.begin():
        report.released_message_ids = release_lost_message_ids(session)
        for job in session.scalars(
            select(Job)
            .where(Job.state == JobState.RECONCILING, Job.lease_expires_at < now)
            .with_for_update(skip_locked=True)
        ):
            finalize(session, job, policy)
            report.finalized.append(job.id)
        rows = session.execute(
            select(Job, NodeRecord.name)
            .join(NodeRecord, NodeRecord.id == Job.node_id)
            .where(
                or_(
                    and_(
                        Job.state == JobState.QUEUED,
                        or_(Job.next_attempt_at.is_(None), Job.next_attempt_at <= now),
                        or_(
                            Job.dispatched_at.is_(None),
                            Job.dispatched_at < stale,
                            and_(
                                Job.next_attempt_at.is_not(None),
                                Job.dispatched_at < Job.next_attempt_at,
                            ),
                        ),
                    ),
                    and_(
                        Job.state == JobState.RUNNING,
                        Job.lease_expires_at < now,
                        or_(
                            Job.dispatched_at.is_(None),
                            Job.dispatched_at < Job.lease_expires_at,
                            # That message may be lost too: send again, now and then.
                            Job.dispatched_at < stale,
                        ),
                    ),
                )
            )
            .order_by(Job.priority.desc(), Job.id)
            .with_for_update(of=Job, skip_locked=True)
        ).all()
        # Sent while their rows are locked, and stamped only once sent: a
        # reader never sees a job as dispatched while the broker is refusing
        # it, and a second scheduler skips the rows. A crash after a send
        # and before the commit sends that job again later: harmless, the
        # claim lets one attempt run.
        for index, (job, node_name) in enumerate(rows):
            try:
                # In the job's own lane: a re-sent job keeps its priority.
                dispatcher.send(RUN_JOB, [job.id], node_queue(node_name), job.priority)
            except BrokerUnavailable as exc:
                report.pending = [pending.id for pending, _ in rows[index:]]
                log.warning("jobs %s due, not sent: %s", report.pending, exc)
                break
            job.dispatched_at = now
            report.dispatched.append(job.id)
    return report
