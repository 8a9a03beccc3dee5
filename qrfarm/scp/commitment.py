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

from pydicom.dataset import Dataset
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
    return record_report(
        ctx, calling_ae, event.assoc.requestor.address, event.event_type, info
    ), None


def record_report(
    ctx: ScpContext,
    calling_ae: str,
    peer_host: str | None,
    event_type: int | None,
    info: Dataset | None,
) -> int:
    """A report recorded (on either receive path); the status to answer.
    It counts only from the node asked: two nodes may share an AE title, so
    the nodes its AE title and address name are handed on."""
    nodes = ctx.known_nodes.for_calling_ae(calling_ae)
    node_ids = [node.id for node in nodes if node.admits_from(peer_host)]
    return handle_report(ctx.sessions, calling_ae, event_type, info, node_ids)
