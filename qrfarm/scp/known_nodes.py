"""Which PACS may store here: the nodes of the database, their AE titles and hosts.

Read from the database at most every few seconds, so that admitting an
association costs no query.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.models import NodeRecord

REFRESH_S = 5.0


@dataclass(frozen=True)
class KnownNode:
    id: int
    name: str
    host: str
    ae_titles: frozenset[str]
    restrict_store_host: bool


class KnownNodes:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._lock = threading.Lock()
        self._by_ae: dict[str, list[KnownNode]] = {}
        self._loaded_at = -REFRESH_S

    def _refresh(self) -> None:
        with self._sessions() as session:
            rows = session.scalars(select(NodeRecord)).all()
            nodes = [
                KnownNode(
                    id=row.id,
                    name=row.name,
                    host=row.host,
                    ae_titles=frozenset([row.ae_title, *(row.store_ae_titles or [])]),
                    restrict_store_host=row.restrict_store_host,
                )
                for row in rows
            ]
        by_ae: dict[str, list[KnownNode]] = {}
        for node in nodes:
            for title in node.ae_titles:
                by_ae.setdefault(title.strip(), []).append(node)
        self._by_ae = by_ae
        self._loaded_at = time.monotonic()

    def for_calling_ae(self, calling_ae: str) -> list[KnownNode]:
        """The nodes that send with this calling AE title (usually one)."""
        with self._lock:
            if time.monotonic() - self._loaded_at >= REFRESH_S:
                self._refresh()
            return list(self._by_ae.get(calling_ae.strip(), []))

    def admits(self, calling_ae: str, peer_host: str | None) -> bool:
        nodes = self.for_calling_ae(calling_ae)
        return any(not n.restrict_store_host or n.host == peer_host for n in nodes)
