"""Group commit: the rows of instances stored on every association of this
SCP process, written together in one transaction.

A C-STORE is answered only once its file and folder are fsynced and its row
committed, and a sender sends its next instance only after that answer: each
association is a chain, and with many at once each commit (a WAL flush on
PostgreSQL, a journal sync on SQLite) and each folder fsync is paid by every
instance. Here the rows wait together: the thread of a store that finds no
group committing commits its own row and every row waiting (fsyncing their
folders once each, one transaction:
:func:`qrfarm.jobs.ingest.record_stored_batch`); the stores that arrive
meanwhile wait, and when that group is in, one of those still waiting
commits the next group. There is no timer and no thread of its own: a lone
association commits its row at once, on its own thread, as without groups.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.jobs.ingest import Outcome, ToRecord, record_stored_batch
from qrfarm.jobs.recording import Correlation, InstanceFacts
from qrfarm.storage import InstanceStorage, StoredFile

log = logging.getLogger(__name__)

# Rows in one transaction at most: enough for every slot's association.
MAX_GROUP = 256


class _Waiting:
    def __init__(self, item: ToRecord) -> None:
        self.item = item
        self.outcome: Outcome | None = None


class GroupCommitter:
    """Records stored instances in groups, each on the thread of one of its stores.

    ``single`` records a group of one (on PostgreSQL an engine in autocommit:
    one round trip, no BEGIN or COMMIT); ``grouped`` a larger one, in a
    transaction."""

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
        self._waiting: list[_Waiting] = []
        self._committing = False
        self._changed = threading.Condition()
        self.groups = 0  # groups committed, and rows in them: for tests and the bench
        self.rows = 0

    def record(
        self,
        facts: InstanceFacts,
        stored: StoredFile,
        correlate: Callable[[Connection], Correlation],
    ) -> list[int]:
        """As :func:`qrfarm.jobs.ingest.record_stored`: the ids of the jobs the
        instance was recorded for, once its row is committed; raises what kept
        it from being recorded (SQLAlchemyError, StorageError)."""
        mine = _Waiting(ToRecord(facts, stored, correlate))
        with self._changed:
            self._waiting.append(mine)
        while True:
            with self._changed:
                while mine.outcome is None and self._committing:
                    self._changed.wait()
                if mine.outcome is not None:
                    break
                # No group is committing and this row still waits: lead the next.
                self._committing = True
                group = self._waiting[:MAX_GROUP]
                del self._waiting[:MAX_GROUP]
            outcomes: list[Outcome] = []
            try:
                outcomes = self._commit(group)
            finally:
                with self._changed:
                    for waiting, outcome in zip(group, outcomes, strict=False):
                        waiting.outcome = outcome
                    # Interrupted (outcomes short): the rows wait again, first in line.
                    self._waiting[:0] = group[len(outcomes) :]
                    self._committing = False
                    self.groups += 1
                    self.rows += len(outcomes)
                    self._changed.notify_all()
        if isinstance(mine.outcome, Exception):
            raise mine.outcome
        return mine.outcome

    def _commit(self, group: list[_Waiting]) -> list[Outcome]:
        engine = self.single if len(group) == 1 else self.grouped
        try:
            return record_stored_batch(
                engine, self.sessions, self.storage, [waiting.item for waiting in group]
            )
        except Exception as exc:  # every store of the group must get an answer
            log.exception("a group of %d rows failed", len(group))
            for waiting in group:  # a file found in place is let go (made ones keep their mark)
                self.storage.release(waiting.item.stored)
            return [exc] * len(group)

    def close(self) -> None:
        """Nothing to stop: every row is committed by a thread that waits for it."""
