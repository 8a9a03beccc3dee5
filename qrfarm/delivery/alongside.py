"""Confirming at a destination while the move to it still runs.

After a move to another node the farm verifies what arrived there; asked
only once the move has ended, that came on top of the move: two IMAGE-level
finds of 100 UIDs took some 0.2 s after a 1 s move of 200 instances to
Orthanc, and Orthanc's Storage Commitment report on 200 instances 0.21 s
(on 1 instance 0.05 s: it looks each one up). So while the move runs, the
farm asks now and then, on a spare association to the destination (only if
one of its permits is free at that moment), what has arrived of what is
expected and not yet confirmed:

* a destination known to do Storage Commitment is then asked to commit to
  what arrived (a request of its own for those instances), so that after
  the move only the last few remain for one small request;
* a destination known not to is confirmed by those finds.

By the move's end most instances are confirmed, and the verification after
it (qrfarm.delivery.verification) asks only for the rest and ends the job.
A confirmation is a row (a second changes nothing); nothing here decides the
job. A destination whose profile does not say yet is left to the
verification after the move.
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
from qrfarm.dicom.commitment import InstanceRef
from qrfarm.errors import NodeBusy, QrfarmError
from qrfarm.jobs import profiles
from qrfarm.jobs.learning import node_and_limit
from qrfarm.jobs.leases import Claim
from qrfarm.jobs.nodes import node_of
from qrfarm.jobs.worker_deps import RunnerDeps
from qrfarm.models import Job, VerifiedBy

from .asking import Expected, committed_at, find_at_destination
from .commitment import CommitmentSettings
from .verification import confirm_for, unconfirmed

log = logging.getLogger(__name__)

# Between two rounds: at least this, and twice the last round's time, so
# that the destination spends at most a third of its time on them beside the
# move, whatever the study's size.
FIRST_ROUND_S = 0.25
MIN_INTERVAL_S = 0.25
# How long the end of the move waits for a round under way.
ROUND_END_WAIT_S = 2.0
# The rounds take one of the destination's associations beside the ones the
# source opens to it for the move (which the farm's permits do not count):
# only for a destination that takes at least this many at once.
MIN_LIMIT = 3


class ConfirmAlongside(threading.Thread):
    """Rounds at the destination until :meth:`stop`: a find, then (``settings``
    given: the destination commits) a commitment request for what it found."""

    def __init__(
        self,
        deps: RunnerDeps,
        taken: Claim,
        node_id: int,
        node: Node,
        settings: CommitmentSettings | None,
    ) -> None:
        super().__init__(name=f"confirm-{taken.job_id}", daemon=True)
        self.deps, self.taken, self.node_id, self.node = deps, taken, node_id, node
        self.settings = settings
        self._context = contextvars.copy_context()  # the job's trace and log context
        self._stopped = threading.Event()
        self._asked: set[str] = set()  # named in a commitment request already

    def stop(self) -> None:
        """No round begins after this, nor a commitment request."""
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
            found = self._find(pending)
            if found is None:
                pass  # none of its permits free this moment: the next round
            elif self.settings is None:
                if found and not self._record(found):
                    return
            elif self._stopped.is_set():
                return  # the move ended: the verification asks for all the rest at once
            else:
                committed = self._commit([e for e in pending if e.sop_instance_uid in found])
                if committed is None:
                    return  # it does not commit now: left to the verification
                if committed and not self._record(committed):
                    return
            # The round's whole time sets the pace (a commitment request's
            # lookup is the destination's work too, beside the move).
            interval = max(MIN_INTERVAL_S, 2 * (time.monotonic() - started))

    def _find(self, pending: list[Expected]) -> set[str] | None:
        """What the destination holds of ``pending``, on an association of one
        round, taken only if one of its permits is free this moment (None:
        none was); closed before anything else is asked, so that the round
        never holds two of the destination's associations."""
        try:
            with self.deps.connections.spare_query_retrieve(self.node) as conn:
                return find_at_destination(conn, pending)
        except NodeBusy:
            return None

    def _commit(self, arrived: list[Expected]) -> set[str] | None:
        """What the destination commits to of ``arrived`` (those not asked
        for yet); None when it would not say."""
        assert self.settings is not None
        fresh = [e for e in arrived if e.sop_instance_uid not in self._asked and e.sop_class_uid]
        if not fresh:
            return set()
        asked = {e.sop_instance_uid for e in fresh}
        self._asked |= asked
        committed = committed_at(
            self.deps,
            self.settings,
            job_id=self.taken.job_id,
            node_id=self.node_id,
            node=self.node,
            refs=[
                InstanceRef(e.sop_class_uid, e.sop_instance_uid) for e in fresh if e.sop_class_uid
            ],
        )
        return None if committed is None else committed & asked

    def _record(self, confirmed: set[str]) -> bool:
        """Record what the destination holds; False once the job is not ours."""
        method = VerifiedBy.FIND if self.settings is None else VerifiedBy.COMMITMENT
        return confirm_for(self.deps, self.taken, confirmed, method)


@contextmanager
def confirm_alongside(
    deps: RunnerDeps, taken: Claim, settings: CommitmentSettings
) -> Iterator[None]:
    """While the body (the move) runs, confirm at the job's destination node
    what has arrived, when its profile says how."""
    try:
        thread = _thread(deps, taken, settings)
    except Exception:
        log.warning("job %d: no confirmation alongside the move", taken.job_id, exc_info=True)
        thread = None
    if thread is None:
        yield
        return
    thread.start()
    try:
        yield
    finally:
        # A round under way is let finish (a moment: a find, or Orthanc's
        # report on what arrived since the last), rather than asked for again
        # by the verification beside it.
        thread.stop()
        thread.join(ROUND_END_WAIT_S)


def _thread(
    deps: RunnerDeps, taken: Claim, settings: CommitmentSettings
) -> ConfirmAlongside | None:
    with deps.sessions() as session:
        job = session.get(Job, taken.job_id)
        node_id = None if job is None else job.destination_node_id
        if node_id is None:
            return None
        method = confirmation_method(session, node_id, settings)
        row, limit = node_and_limit(session, node_id, deps.policy.limit_probe_after_s)
        if method is None or limit < MIN_LIMIT:
            return None
        commitment = settings if method is VerifiedBy.COMMITMENT else None
        return ConfirmAlongside(deps, taken, node_id, node_of(row), commitment)


def confirmation_method(
    session: Session, node_id: int, settings: CommitmentSettings
) -> VerifiedBy | None:
    """How the destination is confirmed alongside; None: not before the move ends."""
    if profiles.trait(session, node_id, profiles.ANSWERS_IMAGE_FIND) is False:
        return None  # what arrived cannot be found out
    commitment = profiles.SUPPORTS_COMMITMENT
    if not profiles.worth_asking(session, node_id, commitment, settings.recheck_after_s):
        return VerifiedBy.FIND
    if profiles.trait(session, node_id, commitment) is True:
        return VerifiedBy.COMMITMENT
    return None  # not known yet: the verification after the move learns it
