"""How many DICOMweb jobs run against one node at once, across the farm.

A DICOMweb node's ``max_associations`` bounds its jobs' HTTP work as it bounds
a DIMSE node's associations: a job takes one of the node's permits (the same
farm-wide permits, under a key of their own) before its first request and
holds it, renewed, until its last. A permit that cannot be renewed is lost:
the job's retrieve stops (PermitLost) rather than run beside another that
took the slot.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from qrfarm.errors import NodeBusy

from .permits import Permits
from .pool import PERMIT_WAIT_S, RENEW_EVERY_S


class WebSlots:
    def __init__(self, permits: Permits, wait_s: float = PERMIT_WAIT_S) -> None:
        self.permits = permits
        self.wait_s = wait_s

    @contextmanager
    def hold(self, node_id: int, limit: int) -> Iterator[threading.Event]:
        """One of the node's ``limit`` slots, or NodeBusy; yields an Event set
        when the slot is lost."""
        key = f"dicomweb-{node_id}"  # the node's id: a safe file or key name
        permit = self.permits.acquire(key, limit, self.wait_s, ask_holders=False)
        if permit is None:
            raise NodeBusy(f"DICOMweb node {node_id} has all its {limit} job slot(s) in use")
        lost, done = threading.Event(), threading.Event()
        every = min(RENEW_EVERY_S, self.permits.ttl_s / 4)

        def renew() -> None:
            while not done.wait(every):
                if not permit.renew():
                    lost.set()
                    return

        renewer = threading.Thread(target=renew, name=f"web-slot-{node_id}", daemon=True)
        renewer.start()
        try:
            yield lost
        finally:
            done.set()
            renewer.join(5)
            permit.release()
