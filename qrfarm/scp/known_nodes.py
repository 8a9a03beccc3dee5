"""Which PACS may store here: the nodes of the database, their AE titles and hosts.

Read from the database at most every few seconds, so that admitting an
association costs no query. When the database cannot be read the last list
read stays in use, but only to let known PACS in (their C-STOREs then get
"out of resources" until it is back): a caller it does not name is turned away
for now, since the database may know it. With no list read at all, nobody is
admitted. It fails closed.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.models import NodeRecord
from qrfarm.nodes.hosts import HostPatterns, Resolver, peer_address

log = logging.getLogger(__name__)

# How old the list may be before it is read again; older, it is out of date.
REFRESH_S = 5.0
# After a failed read, how long before the next try (each try may wait on a
# connection timeout while associations queue behind it).
RETRY_S = 1.0
# How long an association waits for another thread's read of the list.
READ_WAIT_S = 5.0


class Admission(enum.Enum):
    ADMITTED = "admitted"
    # Not a known node's AE title, or not from that node's hosts.
    UNKNOWN = "unknown"
    # Not in the last list read, and the database cannot be read now: the
    # caller may be known there, so it is told to try again later.
    UNVERIFIED = "unverified"


@dataclass(frozen=True)
class KnownNode:
    id: int
    name: str
    host: str
    ae_titles: frozenset[str]
    # Where its associations may come from (its store hosts, or its own host).
    store_hosts: HostPatterns
    any_store_host: bool

    def admits_from(self, peer_host: str | None) -> bool:
        return self.any_store_host or self.store_hosts.admits(peer_address(peer_host))


class KnownNodes:
    def __init__(self, sessions: sessionmaker[Session], resolver: Resolver | None = None) -> None:
        self._sessions = sessions
        self._resolver = resolver or Resolver()
        # Held while reading: one read at a time.
        self._reading = threading.Lock()
        self._by_ae: dict[str, list[KnownNode]] = {}
        self._loaded_at = -float("inf")
        self._failed_at = -float("inf")
        self._warned_any_host: set[str] = set()

    def _read(self) -> None:
        with self._sessions() as session:
            rows = session.scalars(select(NodeRecord)).all()
            nodes = [
                KnownNode(
                    id=row.id,
                    name=row.name,
                    host=row.host,
                    ae_titles=frozenset([row.ae_title, *(row.store_ae_titles or [])]),
                    store_hosts=HostPatterns.parse(row.store_hosts or [row.host], self._resolver),
                    any_store_host=row.any_store_host,
                )
                for row in rows
            ]
        by_ae: dict[str, list[KnownNode]] = {}
        for node in nodes:
            for title in node.ae_titles:
                by_ae.setdefault(title.strip(), []).append(node)
            if node.any_store_host and node.name not in self._warned_any_host:
                self._warned_any_host.add(node.name)
                log.warning(
                    "node %s is admitted from any host: its AE titles alone let a caller in",
                    node.name,
                )
        self._by_ae = by_ae
        self._loaded_at = time.monotonic()

    def _current(self) -> bool:
        """Read the list again when it is due; whether it is up to date now."""
        if self._fresh():
            return True
        if self._failed_recently():
            return False
        # Another thread may be reading: wait for it (at startup every caller
        # needs the first list), but not for ever behind a database that hangs.
        if not self._reading.acquire(timeout=READ_WAIT_S):
            return False
        try:
            if self._fresh():  # read by the thread waited for
                return True
            if self._failed_recently():
                return False
            self._read()
            return True
        except SQLAlchemyError as exc:
            self._failed_at = time.monotonic()
            log.error("known nodes cannot be read (%s): only the last list read is admitted", exc)
            return False
        finally:
            self._reading.release()

    def _fresh(self) -> bool:
        return time.monotonic() - self._loaded_at < REFRESH_S

    def _failed_recently(self) -> bool:
        return time.monotonic() - self._failed_at < RETRY_S

    def expire(self) -> None:
        """Read the list again at the next association (after nodes changed)."""
        self._loaded_at = self._failed_at = -float("inf")

    def for_calling_ae(self, calling_ae: str) -> list[KnownNode]:
        """The nodes that send with this calling AE title (usually one); the last
        list read when the database cannot be read now. Never raises."""
        self._current()
        return list(self._by_ae.get(calling_ae.strip(), []))

    def admission(self, calling_ae: str, peer_host: str | None) -> Admission:
        """Whether a caller with this AE title, from this address, may store here."""
        current = self._current()
        nodes = self._by_ae.get(calling_ae.strip(), [])
        if any(node.admits_from(peer_host) for node in nodes):
            return Admission.ADMITTED
        return Admission.UNKNOWN if current else Admission.UNVERIFIED
