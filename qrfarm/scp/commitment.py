"""Storage Commitment reports a destination sends the farm on an association
of its own (Orthanc always does): the storage SCP takes them and records them
for the worker that asked (qrfarm.delivery.commitment).

The destination proposes the Storage Commitment Push Model SOP class with
itself in the SCP role; the storage SCP accepts it in the SCU role (it
receives N-EVENT-REPORTs only; an N-ACTION sent to the farm is refused as
for any SOP class the farm does not provide). Admission is the same as for a
C-STORE: a registered node's AE title from its hosts.
"""

from __future__ import annotations

from pynetdicom.events import Event

from qrfarm.delivery.commitment import handle_report

from .handlers import ScpContext


def handle_commitment_report(event: Event, ctx: ScpContext) -> tuple[int, None]:
    """An N-EVENT-REPORT: recorded against its transaction; the status answered."""
    calling_ae = str(event.assoc.requestor.ae_title).strip()
    try:
        info = event.event_information
    except (AttributeError, ValueError):
        info = None
    return handle_report(ctx.sessions, calling_ae, event.event_type, info), None
