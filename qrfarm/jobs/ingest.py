"""Recording a stored instance: the one way the storage SCP and a C-GET record
what they receive.

The file is already in place (:meth:`InstanceStorage.store_file`); its row
is correlated by the caller's rule, written and committed, and only then is
the file settled. A row that cannot be committed leaves no file of its own
behind, and never removes a file another committed row points to.

Instances can be recorded one by one (:func:`record_stored`) or as a group
in one transaction (:func:`record_stored_batch`, the storage SCP's group
commit): one commit, one WAL flush and one fsync per folder for all of
them. A group that fails is recorded again row by row, so that one bad row
fails only itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.storage import InstanceStorage, StoredFile

from .recording import (
    Correlation,
    InstanceFacts,
    Recorded,
    record,
    reopen_late,
    unrecorded_check,
)

log = logging.getLogger(__name__)

REOPEN_TRIES = 4


@dataclass(frozen=True)
class ToRecord:
    """A stored instance waiting for its row: what it is, where its bytes are,
    and the caller's rule for which jobs it belongs to."""

    facts: InstanceFacts
    stored: StoredFile
    correlate: Callable[[Connection], Correlation]


# The ids of the jobs an instance was recorded for (none: an orphan), or why
# it was not: SQLAlchemyError (its row not committed) or StorageError (its
# folder not made durable); either is answered as out of resources.
Outcome = list[int] | Exception


def record_stored(
    engine: Engine,
    sessions: sessionmaker[Session],
    storage: InstanceStorage,
    facts: InstanceFacts,
    stored: StoredFile,
    correlate: Callable[[Connection], Correlation],
) -> list[int]:
    """Correlate and record ``stored``; the ids of the jobs it was recorded for
    (none: an orphan). Raises SQLAlchemyError when the row could not be
    committed (the instance is then to be refused as out of resources).

    On PostgreSQL ``engine`` may run each statement in autocommit: the row and
    its job's count are one statement, so an instance of a known move costs
    one round trip."""
    (outcome,) = record_stored_batch(
        engine, sessions, storage, [ToRecord(facts, stored, correlate)]
    )
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def record_stored_batch(
    engine: Engine,
    sessions: sessionmaker[Session],
    storage: InstanceStorage,
    batch: Sequence[ToRecord],
) -> list[Outcome]:
    """Record every instance of ``batch`` in one transaction on ``engine`` (which
    must then not run in autocommit, unless the batch is of one); the outcome
    of each, in order.

    The folders their files were linked into are fsynced first, once each; a
    file whose folder could not be is not recorded. If the group's
    transaction fails, each row is tried in a transaction of its own. A file
    is settled once its row is committed, or removed if this store created it
    and its row could not be."""
    outcomes: list[Outcome | None] = [None] * len(batch)
    failed_folders = storage.sync_folders([item.stored for item in batch])
    waiting: list[int] = []
    for index, item in enumerate(batch):
        folder = item.stored.unsynced_folder
        if folder is not None and folder in failed_folders:
            outcomes[index] = failed_folders[folder]
        else:
            waiting.append(index)
    # Rows of one move together and in one order: two SCP processes counting
    # for the same jobs then lock their rows in the same order.
    waiting.sort(key=lambda i: _order(batch[i].facts))
    recorded: dict[int, Recorded] = {}
    if waiting:
        try:
            recorded = dict(
                zip(waiting, _transaction(engine, storage, batch, waiting), strict=True)
            )
        except Exception as exc:  # noqa: BLE001 (handed to the caller as the outcome)
            if len(waiting) == 1:
                outcomes[waiting[0]] = exc
            else:
                log.warning("%d rows not committed together (%s): one by one", len(waiting), exc)
                for index in waiting:
                    try:
                        recorded[index] = _transaction(engine, storage, batch, [index])[0]
                    except Exception as row_exc:  # noqa: BLE001 (as above)
                        outcomes[index] = row_exc
    late: set[int] = set()
    for index, item in enumerate(batch):
        if index in recorded:
            storage.settle(item.stored)
            outcomes[index] = recorded[index].job_ids
            late.update(recorded[index].late)
        else:
            discard_unrecorded(
                engine,
                storage,
                item.stored,
                item.facts.study_instance_uid,
                _relative(storage, item.stored),
            )
    if late:
        _reopen(sessions, sorted(late))
    assert all(outcome is not None for outcome in outcomes)
    return [outcome for outcome in outcomes if outcome is not None]


def _reopen(sessions: sessionmaker[Session], job_ids: list[int]) -> None:
    """Reconcile again the jobs that got an instance after they were reconciled
    (rare). The rows are durable whatever happens here, so a failure is not
    answered as one; a moment's failure (a deadlock with the job's own
    reconciliation, a blip) is tried again, for a job left ended would go on
    naming as missing an instance it holds."""
    for attempt in range(REOPEN_TRIES):
        try:
            with sessions() as session, session.begin():
                reopen_late(session, job_ids)
            return
        except SQLAlchemyError as exc:
            if attempt + 1 == REOPEN_TRIES:
                log.error("jobs %s not reconciled again after a late arrival: %s", job_ids, exc)
                return
            time.sleep(0.05 * 2**attempt)


def _transaction(
    engine: Engine, storage: InstanceStorage, batch: Sequence[ToRecord], indexes: list[int]
) -> list[Recorded]:
    """Correlate and record ``batch[i]`` for each of ``indexes``, in one
    transaction. Once more on a fresh connection if the pooled one turned
    out dead (the engine does not ping before each use: one round trip less
    per group)."""
    for attempt in (1, 2):
        try:
            with engine.connect() as connection, connection.begin():
                return [
                    record(
                        connection,
                        batch[i].facts,
                        batch[i].stored,
                        _relative(storage, batch[i].stored),
                        batch[i].correlate(connection),
                    )
                    for i in indexes
                ]
        except DBAPIError as exc:
            if attempt == 2 or not exc.connection_invalidated:
                raise
    raise AssertionError("unreachable")


def _order(facts: InstanceFacts) -> tuple[str, int, str, str]:
    return (
        facts.originator_ae or "",
        facts.originator_message_id or 0,
        facts.study_instance_uid,
        facts.sop_instance_uid,
    )


def _relative(storage: InstanceStorage, stored: StoredFile) -> str:
    return str(stored.path.relative_to(storage.root))


def discard_unrecorded(
    engine: Engine, storage: InstanceStorage, stored: StoredFile, study_uid: str, relative: str
) -> None:
    """The row was not committed: remove the file this store created, unless a
    record committed meanwhile points to it (the same bytes, received at once
    on another association, found it in place and recorded it). When the
    database cannot say, the file and its mark stay: a commit whose answer was
    lost, or another store's row, may vouch for it, and the next start's
    recovery (:meth:`InstanceStorage.recover`) decides by the rows then."""
    try:
        storage.discard(stored, unrecorded_check(engine, study_uid, relative))
    except SQLAlchemyError as exc:
        log.warning("kept %s for recovery: its row could not be looked for (%s)", relative, exc)
