"""The instances a retrieve should bring: its IMAGE-level find, stored as the job's expected list.

For a move the find can run on a spare association while the move runs on
the main one: on a study of a few hundred instances, its pending responses
take a tenth of the whole move when they come first. The spare is used only
when the node has a permit free at that moment; otherwise, or if the spare
fails, the find runs on the move's own association as before.
"""

from __future__ import annotations

import logging
import threading
from contextlib import AbstractContextManager
from typing import Protocol

from opentelemetry import context as otel_context
from pydicom.dataset import Dataset
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.dicom import Connection, Node, Root
from qrfarm.dicom.planning import ImageRef, expected_instances
from qrfarm.errors import QrfarmError
from qrfarm.models import ExpectedInstance

from .leases import Claim, fenced

log = logging.getLogger(__name__)


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
    store_expected(sessions, taken, expected_instances(conn, identifier, root))


class ExpectedAlongside(threading.Thread):
    """The expected-instances find on a spare association, in a thread of its own.

    :meth:`begin` says whether its association is open; if so, the caller
    runs the move and then calls :meth:`finished` (whether the expected list
    was stored; if not, the caller asks on its own association).
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
        # The job's trace goes on in this thread: the spare's spans are the run's.
        self._trace_context = otel_context.get_current()
        self._opened = threading.Event()
        self._decided = threading.Event()
        self._stored = False

    def begin(self) -> bool:
        """Start; whether the spare association is open (if not, the thread has ended)."""
        self.start()
        self._decided.wait()
        if self._opened.is_set():
            return True
        self.join()
        return False

    def run(self) -> None:
        # Whatever goes wrong here, the caller finds on its own association.
        token = otel_context.attach(self._trace_context)
        try:
            with self.connections.spare_query_retrieve(self.node) as conn:
                self._opened.set()
                self._decided.set()
                find_and_store(self.sessions, self.taken, conn, self.identifier, self.root)
            self._stored = True
        except QrfarmError as exc:  # no permit free, refused, aborted...
            log.debug("job %d: no spare association: %s", self.taken.job_id, exc)
        except Exception:
            log.warning(
                "job %d: expected instances not found alongside the move",
                self.taken.job_id,
                exc_info=True,
            )
        finally:
            self._decided.set()
            otel_context.detach(token)

    def finished(self) -> bool:
        """Wait for the find; whether it stored the expected list."""
        self.join()
        return self._stored
