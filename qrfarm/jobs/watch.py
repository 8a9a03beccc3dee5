"""While an operation runs: keep the lease, write progress, pass a cancel on to the PACS.

One thread per running job wakes about once a second: it renews the lease
(fenced by the claim's token), writes the latest pending counts, and sends
C-CANCEL once the job's cancel was asked for. Progress is therefore written
about once a second, not once per pending response.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.dicom import Connection, Response
from qrfarm.models import Job

from .leases import Claim, renew
from .policy import JobPolicy

log = logging.getLogger(__name__)


class JobWatch:
    def __init__(self, sessions: sessionmaker[Session], claim: Claim, policy: JobPolicy) -> None:
        self.sessions = sessions
        self.claim = claim
        self.policy = policy
        self.connection: Connection | None = None
        self.lost = threading.Event()
        self.cancel_sent = False
        self._latest: Response | None = None
        self._written: Response | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch-{claim.job_id}", daemon=True)

    def __enter__(self) -> JobWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._write_progress()

    def on_response(self, response: Response) -> None:
        """The operation's callback: remember the latest counts (written by the thread)."""
        if response.is_pending and response.remaining is not None:
            self._latest = response

    def _run(self) -> None:
        while not self._stop.wait(
            min(self.policy.progress_interval_s, self.policy.lease_ttl_s / 3)
        ):
            try:
                self._tick()
            except SQLAlchemyError as exc:
                log.warning("job %d: progress not written: %s", self.claim.job_id, exc)

    def _tick(self) -> None:
        with self.sessions() as session, session.begin():
            if not renew(session, self.claim, self.policy):
                self.lost.set()
            cancel = session.scalar(select(Job.cancel_requested).where(Job.id == self.claim.job_id))
        self._write_progress()
        if cancel and not self.cancel_sent and self.connection is not None:
            self.cancel_sent = self.connection.cancel()

    def _write_progress(self) -> None:
        latest = self._latest
        if latest is None or latest is self._written:
            return
        with self.sessions() as session, session.begin():
            session.execute(
                update(Job)
                .where(Job.id == self.claim.job_id, Job.lease_token == self.claim.token)
                .values(
                    progress_remaining=latest.remaining,
                    progress_completed=latest.completed,
                    progress_failed=latest.failed,
                    progress_warning=latest.warning,
                )
            )
        self._written = latest
