"""While an operation runs: keep the lease, write progress, pass a cancel on to the PACS
(or, for work without a connection to cancel, set ``halted``).

One thread per running job wakes about once a second: it renews the lease
(fenced by the claim's token), writes the latest pending counts, and sends
C-CANCEL once the job's cancel was asked for. Progress is therefore written
about once a second, not once per pending response.

A lease found taken over, or left unrenewed for its whole TTL (the database
out of reach: by then another worker may own the job), is lost: the
operation is stopped (C-CANCEL, then A-ABORT if ignored) and raises
LeaseLost, so that two workers never run the same C-MOVE at the PACS.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.dicom import Connection, Response
from qrfarm.errors import LeaseLost
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
        # The job's cancel seen; ``halted``: lost or cancelled, for work that
        # checks between its steps (a forward, instance by instance) rather
        # than through a connection's C-CANCEL.
        self.cancelled = threading.Event()
        self.halted = threading.Event()
        self._why_lost = ""
        self.cancel_sent = False
        self._latest: Response | None = None
        self._written: Response | None = None
        self._renewed_at = time.monotonic()
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
            if self.lost.is_set():
                # The runner may set its connection after the loss was seen.
                self._stop_operation()
                continue
            try:
                self._tick()
            except SQLAlchemyError as exc:
                log.warning("job %d: lease or progress not written: %s", self.claim.job_id, exc)
                if time.monotonic() - self._renewed_at >= self.policy.lease_ttl_s:
                    self._lose("its lease could not be renewed for its whole TTL")

    def _tick(self) -> None:
        with self.sessions() as session, session.begin():
            renewed = renew(session, self.claim, self.policy)
            cancel = session.scalar(select(Job.cancel_requested).where(Job.id == self.claim.job_id))
        if not renewed:
            self._lose("its lease was taken over")
            return
        self._renewed_at = time.monotonic()
        self._write_progress()
        if cancel:
            self.cancelled.set()
            self.halted.set()
        if cancel and not self.cancel_sent and self.connection is not None:
            self.cancel_sent = self.connection.cancel()

    def _lose(self, why: str) -> None:
        log.warning("job %d: %s; stopping its operation", self.claim.job_id, why)
        self._why_lost = why
        self.lost.set()
        self.halted.set()
        self._stop_operation()

    def _stop_operation(self) -> None:
        connection = self.connection
        if connection is not None and connection.stopped is None:
            connection.stop(
                LeaseLost(f"job {self.claim.job_id}: {self._why_lost}; its operation was cancelled")
            )

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
