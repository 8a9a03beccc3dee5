"""Who may associate with the storage SCP: one decision for both receive paths.

The called AE title must be ours, the calling AE title a known node's, from
that node's hosts; then a slot must be free. Fails closed: whatever goes
wrong while deciding rejects (transiently), never admits.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from qrfarm.dicom import rejection
from qrfarm.observability.metrics import SCP_ASSOCIATIONS

from .gate import MAX_PROBES, SlotHolder
from .known_nodes import Admission

if TYPE_CHECKING:
    from .handlers import ScpContext

log = logging.getLogger(__name__)

Reason = tuple[int, int, int]  # an A-ASSOCIATE-RJ (result, source, diagnostic)

REJECT_UNKNOWN_CALLING_AE = rejection.UNKNOWN_CALLING_AE
REJECT_UNKNOWN_CALLED_AE = rejection.UNKNOWN_CALLED_AE
REJECT_UNVERIFIED = rejection.UNVERIFIED_CALLING_AE  # transient: the database is out of reach
REJECT_SHUTTING_DOWN = rejection.LOCAL_LIMIT_EXCEEDED  # transient: try again elsewhere
REJECT_NO_SLOT = rejection.LOCAL_LIMIT_EXCEEDED  # transient: every slot is held


def admit(
    ctx: ScpContext, calling_ae: str, called_ae: str, ours: str, host: str, holder: SlotHolder
) -> Reason | None:
    """Admit the association (a slot taken for ``holder``), or the reason to reject it."""
    try:
        reason = refusal(ctx, calling_ae.strip(), called_ae.strip(), ours.strip(), host)
    except Exception:
        log.exception("association not admitted: admission could not be decided")
        reason = REJECT_UNVERIFIED
    probe = is_probe(ctx, calling_ae.strip())
    if reason is None and not ctx.gate.admit(holder, probe=probe):
        if probe:
            log.warning("probe association from %s rejected: %d probes held", host, MAX_PROBES)
        else:
            log.warning("association rejected: all %d slots are held", ctx.gate.max_associations)
        reason = REJECT_NO_SLOT
    SCP_ASSOCIATIONS.labels("accepted" if reason is None else "rejected").inc()
    return reason


def is_probe(ctx: ScpContext, calling_ae: str) -> bool:
    """The farm's own health probe (a blank title names no probe)."""
    return bool(ctx.probe_ae_title) and calling_ae == ctx.probe_ae_title


def refusal(
    ctx: ScpContext, calling_ae: str, called_ae: str, ours: str, host: str
) -> Reason | None:
    """Why the association is refused, or None to admit."""
    if ctx.draining.is_set():
        return REJECT_SHUTTING_DOWN
    if called_ae != ours:
        log.warning(
            "association from %s at %s rejected: it called %r, not %r",
            calling_ae,
            host,
            called_ae,
            ours,
        )
        return REJECT_UNKNOWN_CALLED_AE
    if is_probe(ctx, calling_ae):
        SCP_ASSOCIATIONS.labels("probe").inc()
        return None
    admission = ctx.known_nodes.admission(calling_ae, host)
    if admission is Admission.UNKNOWN:
        log.warning(
            "association from %s at %s rejected: no known node has that AE title at that host",
            calling_ae,
            host,
        )
        return REJECT_UNKNOWN_CALLING_AE
    if admission is Admission.UNVERIFIED:
        log.warning(
            "association from %s at %s rejected for now: the known nodes cannot be read",
            calling_ae,
            host,
        )
        return REJECT_UNVERIFIED
    return None
