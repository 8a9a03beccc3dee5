"""The presentation contexts the storage SCP accepts, on both receive paths."""

from __future__ import annotations

from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
from pynetdicom.presentation import PresentationContext, build_context

from qrfarm.dicom.commitment import STORAGE_COMMITMENT_PUSH
from qrfarm.dicom.contexts import QR_TRANSFER_SYNTAXES
from qrfarm.dicom.model import VERIFICATION_SOP_CLASS


def supported_contexts() -> list[PresentationContext]:
    """What the SCP accepts, on both receive paths: Verification and every
    storage SOP class in every syntax, and Storage Commitment reports on a
    destination's own association (it takes the SCP role, the farm the SCU
    role: qrfarm.scp.commitment, qrfarm.scp.aio.reports)."""
    contexts = [build_context(VERIFICATION_SOP_CLASS, ALL_TRANSFER_SYNTAXES)]
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        contexts.append(build_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES))
    commitment = build_context(STORAGE_COMMITMENT_PUSH, QR_TRANSFER_SYNTAXES)
    commitment.scu_role, commitment.scp_role = False, True
    contexts.append(commitment)
    return contexts
