"""Refusing an association from an EVT_REQUESTED handler so that the peer reads why."""

from __future__ import annotations

import time

from pynetdicom.events import Event

FLUSH_S = 2.0
# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4.
UNKNOWN_CALLING_AE = (0x01, 0x01, 0x03)
UNKNOWN_CALLED_AE = (0x01, 0x01, 0x07)
NO_REASON_GIVEN = (0x01, 0x01, 0x01)
# The caller cannot be checked now (its list is out of reach): try again later.
UNVERIFIED_CALLING_AE = (0x02, 0x01, 0x03)
LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)  # transient


def reject(event: Event, reason: tuple[int, int, int]) -> None:
    """Send A-ASSOCIATE-RJ and wait until it is on the wire.

    The DUL thread sends it; the association thread closes the socket as soon
    as the handler returns, and the peer would see an abort instead of the
    reason. So wait for Sta13 (waiting for the peer to close) or Sta1 (closed).
    """
    event.assoc.acse.send_reject(*reason)
    deadline = time.monotonic() + FLUSH_S
    while time.monotonic() < deadline:
        if event.assoc.dul.state_machine.current_state in ("Sta13", "Sta1"):
            return
        time.sleep(0.001)
