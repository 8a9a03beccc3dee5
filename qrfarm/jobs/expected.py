"""The instances a move should bring: its IMAGE-level find, stored as the job's expected list.

The find can run on a spare association while the move runs on the main
one: on a study of a few hundred instances its pending responses take a
tenth of the whole move when they come first. The spare is used only when
the node has a permit free at that moment; otherwise the find runs on the
move's own association before the move, and if the spare fails half-way,
after it.

A PACS that answers the find with a failure (some do not support IMAGE-level
queries) leaves the list unknown: the move runs all the same and is
reconciled on the counts the PACS reports.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from contextlib import AbstractContextManager
from typing import Protocol

from pydicom.dataset import Dataset
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.dicom import Connection, Node, Root
from qrfarm.dicom.planning import ImageRef, expected_instances
from qrfarm.errors import QrfarmError
from qrfarm.models import ExpectedInstance

from .leases import Claim, fenced

log = logging.getLogger(__name__)

# How long a move waits for its spare association to open before it starts
# anyway (the find then follows on whichever association gets there).
SPARE_OPEN_WAIT_S = 0.5


class SpareConnections(Protocol):
    def spare_query_retrieve(self, node: Node) -> AbstractContextManager[Connection]:
        """A second association to the node if a permit is free now; NodeBusy otherwise."""
        ...


def store_expected(sessions: sessionmaker[Session], taken: Claim, refs: list[ImageRef]) -> None:
    """The job's expected instances (replacing any of an earlier attempt)."""
    with sessions() as session, session.begin():
        job = fenced(session, taken)
        if job is None:
            return
        session.execute(delete(ExpectedInstance).where(ExpectedInstance.job_id == job.id))
        session.add_all(
            ExpectedInstance(
                job_id=job.id,
                sop_instance_uid=r.sop_instance_uid,
                sop_class_uid=r.sop_class_uid,
                study_instance_uid=r.study_instance_uid,
                series_instance_uid=r.series_instance_uid,
            )
            for r in refs
        )
        job.expected_count = len(refs)


def find_and_store(
    sessions: sessionmaker[Session],
    taken: Claim,
    conn: Connection,
    identifier: Dataset,
    root: Root,
) -> None:
    """Find the move's instances and store them as expected; a find the PACS
    answers with a failure leaves the list unknown (association errors raise)."""
    try:
        refs = expected_instances(conn, identifier, root)
    except LookupError as exc:
        log.warning("job %d: expected instances unknown, %s", taken.job_id, exc)
        return
    store_expected(sessions, taken, refs)


class ExpectedAlongside(threading.Thread):
    """The expected-instances find on a spare association, in a thread of its own.

    :meth:`begin` says whether the move may start without it (the spare is
    open, or still opening); the caller then runs the move and, whatever
    happens to it, calls :meth:`settled` (if False, the caller finds on its
    own association).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        connections: SpareConnections,
        taken: Claim,
        node: Node,
        identifier: Dataset,
        root: Root,
    ) -> None:
        super().__init__(name=f"expected-{taken.job_id}", daemon=True)
        self.sessions, self.connections, self.taken = sessions, connections, taken
        self.node, self.identifier, self.root = node, identifier, root
        # The job's trace and log context go on in this thread.
        self._context = contextvars.copy_context()
        self._opened = threading.Event()
        self._decided = threading.Event()
        # Stored, or the PACS refused the find, or the lease was lost: either
        # way the caller has nothing left to find.
        self._settled = False

    def begin(self) -> bool:
        self.start()
        if self._decided.wait(SPARE_OPEN_WAIT_S) and not self._opened.is_set():
            self.join()
            return False
        return True

    def run(self) -> None:
        try:
            self._context.run(self._find)
        finally:
            self._decided.set()

    def _find(self) -> None:
        try:
            with self.connections.spare_query_retrieve(self.node) as conn:
                self._opened.set()
                self._decided.set()
                find_and_store(self.sessions, self.taken, conn, self.identifier, self.root)
            self._settled = True
        except QrfarmError as exc:
            if self._opened.is_set():
                log.info("job %d: spare association failed: %s", self.taken.job_id, exc)
            else:  # no permit free, or the association was refused
                log.debug("job %d: no spare association: %s", self.taken.job_id, exc)
        except Exception:
            log.warning(
                "job %d: expected instances not found alongside the move",
                self.taken.job_id,
                exc_info=True,
            )

    def settled(self) -> bool:
        """Wait for the find; whether the expected list is settled without the caller."""
        self.join()
        return self._settled
