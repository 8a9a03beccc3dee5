"""Group commit: the rows of instances stored on every association of this
SCP process, written together in one transaction.

A C-STORE is answered only once its file and folder are fsynced and its row
committed, and a sender sends its next instance only after that answer: each
association is a chain, and with many at once each commit (a WAL flush on
PostgreSQL, a journal sync on SQLite) and each folder fsync is paid by every
instance. One committer thread takes whatever rows are waiting when its
previous group is done, fsyncs their folders once each and commits them in
one transaction (:func:`qrfarm.jobs.ingest.record_stored_batch`); every
instance is answered as soon as its group is in. There is no timer: a group
gathers while the one before it commits, so a lone association pays no wait.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.jobs.ingest import Outcome, ToRecord, record_stored_batch
from qrfarm.jobs.recording import Correlation, InstanceFacts
from qrfarm.storage import InstanceStorage, StoredFile

log = logging.getLogger(__name__)

# Rows in one transaction at most: enough for every slot's association.
MAX_GROUP = 256
_STOP = None


class GroupCommitter:
    """Records stored instances in groups, off the caller's thread.

    ``single`` records a group of one (on PostgreSQL an engine in autocommit:
    one round trip, no BEGIN or COMMIT); ``grouped`` a larger one, in a
    transaction. Started on first use, in the process that uses it (after a
    fork of ``--processes``)."""

    def __init__(
        self,
        single: Engine,
        grouped: Engine,
        sessions: sessionmaker[Session],
        storage: InstanceStorage,
    ) -> None:
        self.single = single
        self.grouped = grouped
        self.sessions = sessions
        self.storage = storage
        self._queue: queue.SimpleQueue[tuple[ToRecord, Future[Outcome]] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def record(
        self,
        facts: InstanceFacts,
        stored: StoredFile,
        correlate: Callable[[Connection], Correlation],
    ) -> list[int]:
        """As :func:`qrfarm.jobs.ingest.record_stored`: the ids of the jobs the
        instance was recorded for, once its row is committed; raises what kept
        it from being recorded (SQLAlchemyError, StorageError)."""
        future: Future[Outcome] = Future()
        self._start()
        self._queue.put((ToRecord(facts, stored, correlate), future))
        outcome = future.result()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._closed:
                raise RuntimeError("the group committer is closed")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="scp-group-commit", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            group = [first]
            stopping = False
            while len(group) < MAX_GROUP:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stopping = True
                    break
                group.append(more)
            self._commit(group)
            if stopping:
                return

    def _commit(self, group: list[tuple[ToRecord, Future[Outcome]]]) -> None:
        engine = self.single if len(group) == 1 else self.grouped
        try:
            outcomes = record_stored_batch(
                engine, self.sessions, self.storage, [item for item, _ in group]
            )
        except Exception as exc:  # every waiting store must get an answer
            log.exception("a group of %d rows failed", len(group))
            outcomes = [exc] * len(group)
        for (_, future), outcome in zip(group, outcomes, strict=True):
            future.set_result(outcome)

    def close(self) -> None:
        """Commit what is waiting, then stop the thread."""
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(30)
