"""Confirming at a destination while the move to it still runs.

A destination that does not do Storage Commitment is verified by IMAGE-level
C-FINDs for the instances the move should bring. Asked only once the move
has ended, those finds (one per series and 100 UIDs) came on top of the move:
some 0.2 s after a 1 s move of 200 instances to Orthanc. So while the move
runs, the farm asks now and then what has arrived of what is expected and
not yet confirmed, on a spare association to the destination (only if one of
its permits is free at that moment); by the move's end most instances are
confirmed, and the verification after it asks only for the rest.

Nothing here decides the job: a confirmation is a row (idempotent), the
verification after the move (qrfarm.delivery.verification) ends the job. A
destination that may commit is left to Storage Commitment, asked after the
move: its own statement is preferred to what a find shows.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from qrfarm.dicom import Node
from qrfarm.errors import QrfarmError
from qrfarm.jobs import profiles
from qrfarm.jobs.leases import Claim, fenced
from qrfarm.jobs.nodes import node_of
from qrfarm.jobs.worker_deps import RunnerDeps
from qrfarm.models import Job, NodeRecord, VerifiedBy

from .commitment import CommitmentSettings
from .verification import find_at_destination, record_confirmed, unconfirmed

log = logging.getLogger(__name__)

# Between two rounds of finds: at least this, and twice the last round's
# time, so that the destination spends at most a third of one association
# answering them whatever the study's size.
FIRST_ROUND_S = 0.25
MIN_INTERVAL_S = 0.25


class ConfirmAlongside(threading.Thread):
    """Rounds of finds at the destination until :meth:`stop`."""

    def __init__(self, deps: RunnerDeps, taken: Claim, node: Node) -> None:
        super().__init__(name=f"confirm-{taken.job_id}", daemon=True)
        self.deps, self.taken, self.node = deps, taken, node
        self._context = contextvars.copy_context()  # the job's trace and log context
        self._stopped = threading.Event()
        self.rounds = 0

    def stop(self) -> None:
        """No round begins after this; one under way ends on its own (its
        rows change nothing the verification after the move relies on)."""
        self._stopped.set()

    def run(self) -> None:
        try:
            self._context.run(self._confirm)
        except QrfarmError as exc:
            log.debug("job %d: no confirmation alongside the move: %s", self.taken.job_id, exc)
        except Exception:
            log.warning(
                "job %d: confirmation alongside the move failed", self.taken.job_id, exc_info=True
            )

    def _confirm(self) -> None:
        interval = FIRST_ROUND_S
        with self.deps.connections.spare_query_retrieve(self.node) as conn:
            while not self._stopped.wait(interval):
                with self.deps.sessions() as session:
                    job = session.get(Job, self.taken.job_id)
                    if job is None:
                        return
                    known = job.expected_count is not None
                    pending = unconfirmed(session, self.taken.job_id) if known else []
                if not known:
                    continue  # the expected list is still being found
                if not pending:
                    return
                started = time.monotonic()
                found = find_at_destination(conn, pending)
                self.rounds += 1
                if found and not self._record(found):
                    return
                interval = max(MIN_INTERVAL_S, 2 * (time.monotonic() - started))

    def _record(self, found: set[str]) -> bool:
        """Record what the destination holds; False once the job is not ours."""
        with self.deps.sessions() as session, session.begin():
            job = fenced(session, self.taken)
            if job is None:
                return False
            job.confirmed_count = record_confirmed(session, job.id, found, VerifiedBy.FIND)
            job.verified_by = VerifiedBy.FIND.value
        return True


@contextmanager
def confirm_alongside(
    deps: RunnerDeps, taken: Claim, settings: CommitmentSettings
) -> Iterator[None]:
    """While the body (the move) runs, confirm at the job's destination node
    what has arrived, when that node is verified by C-FIND."""
    thread = None
    with deps.sessions() as session:
        job = session.get(Job, taken.job_id)
        node_id = None if job is None else job.destination_node_id
        if node_id is not None and _by_find(session, node_id, settings):
            thread = ConfirmAlongside(deps, taken, node_of(session.get_one(NodeRecord, node_id)))
    if thread is None:
        yield
        return
    thread.start()
    try:
        yield
    finally:
        thread.stop()


def _by_find(session: Session, node_id: int, settings: CommitmentSettings) -> bool:
    commitment = profiles.SUPPORTS_COMMITMENT
    if profiles.worth_asking(session, node_id, commitment, settings.recheck_after_s):
        return False  # Storage Commitment is asked after the move
    return profiles.trait(session, node_id, profiles.ANSWERS_IMAGE_FIND) is not False
