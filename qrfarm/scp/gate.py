"""Who may hold the SCP's threads: slots for admitted associations, and a cap on
connections from one host that have not been admitted (yet).

pynetdicom's ``maximum_associations`` counts association threads, and a
thread begins with the TCP connection: connections that never send an
A-ASSOCIATE-RQ would fill every slot until their timeout, and lock the PACS
out. Here a slot is taken only when an association is admitted (its calling
AE and host known), so anonymous connections never hold one; they are capped
per host instead, and closed when they have not asked within the associate
timeout (pynetdicom's ARTIM timer, which runs on ``acse_timeout``).
"""

from __future__ import annotations

import threading
import weakref
from typing import Protocol

from pynetdicom.association import Association

# Associations of the farm's own probe at once: apart from the slots, so that
# probes (whose AE title anyone can send) never hold one a PACS needs.
MAX_PROBES = 4


class SlotHolder(Protocol):
    """What holds a slot: a pynetdicom association, or one of the asyncio path's."""

    is_released: bool
    is_aborted: bool
    is_rejected: bool

    def is_alive(self) -> bool: ...


class ConnectionGate:
    def __init__(self, max_associations: int, max_pending_per_host: int) -> None:
        self.max_associations = max_associations
        self.max_pending_per_host = max_pending_per_host
        self._admitted: weakref.WeakSet[SlotHolder] = weakref.WeakSet()
        self._probes: weakref.WeakSet[SlotHolder] = weakref.WeakSet()
        self._lock = threading.Lock()
        # Held while a connection is counted and its association thread started.
        self.accepting = threading.Lock()

    @staticmethod
    def _holding(holders: weakref.WeakSet[SlotHolder]) -> list[SlotHolder]:
        return [
            a
            for a in holders
            if a.is_alive() and not (a.is_released or a.is_aborted or a.is_rejected)
        ]

    def admit(self, assoc: SlotHolder, *, probe: bool = False) -> bool:
        """Take a slot for an admitted association (a probe's own, for the
        farm's probe); False when none is free."""
        holders, cap = (
            (self._probes, MAX_PROBES) if probe else (self._admitted, self.max_associations)
        )
        with self._lock:
            if len(self._holding(holders)) >= cap:
                return False
            holders.add(assoc)
            return True

    def pending_from(self, host: str, associations: list[Association]) -> int:
        """Connections from ``host`` not admitted (yet), among the server's."""
        with self._lock:
            admitted = set(self._admitted) | set(self._probes)
        return sum(
            1
            for a in associations
            if a not in admitted and a.requestor.address == host and a.is_alive()
        )

    def accepts_connection(self, host: str, associations: list[Association]) -> bool:
        return self.pending_from(host, associations) < self.max_pending_per_host
