"""Recording a stored instance: the one way the storage SCP and a C-GET record
what they receive.

The file is already in place (:meth:`InstanceStorage.store_file`); its row
is correlated by the caller's rule, written and committed, and only then is
the file settled. A row that cannot be committed leaves no file of its own
behind, and never removes a file another committed row points to.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.storage import InstanceStorage, StoredFile

from .recording import Correlation, InstanceFacts, file_is_recorded, record, reopen_late

log = logging.getLogger(__name__)


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

    Once more on a fresh connection if the pooled one turned out dead (the
    engine does not ping before each use: one round trip less per instance).
    On PostgreSQL ``engine`` may run each statement in autocommit: the row and
    its job's count are one statement, so an instance of a known move costs
    one round trip."""
    relative = str(stored.path.relative_to(storage.root))
    try:
        for attempt in (1, 2):
            try:
                with engine.connect() as connection, connection.begin():
                    recorded = record(connection, facts, stored, relative, correlate(connection))
                break
            except DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise
    except BaseException:
        discard_unrecorded(engine, storage, stored, facts.study_instance_uid, relative)
        raise
    storage.settle(stored)
    if recorded.late:
        # Rare: an instance after its job was reconciled. The row is durable
        # whatever happens here: a failure is logged, not answered as one.
        try:
            with sessions() as session, session.begin():
                reopen_late(session, recorded.late)
        except SQLAlchemyError as exc:
            log.error("jobs %s not reconciled again after a late arrival: %s", recorded.late, exc)
    return recorded.job_ids


def discard_unrecorded(
    engine: Engine, storage: InstanceStorage, stored: StoredFile, study_uid: str, relative: str
) -> None:
    """The row was not committed: remove the file this store created, unless a
    record committed meanwhile points to it (the same bytes, received at once
    on another association, found it in place and recorded it)."""
    if stored.created:
        try:
            with engine.connect() as connection:
                if file_is_recorded(connection, study_uid, relative):
                    storage.settle(stored)
                    return
        except SQLAlchemyError:
            pass  # out of reach: no other record could have committed either
    storage.discard(stored)
