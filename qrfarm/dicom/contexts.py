"""The presentation contexts an association proposes, chosen explicitly.

A Q/R context uses the uncompressed syntaxes every PACS speaks. A storage
context for C-GET proposes every transfer syntax pynetdicom knows, so that
the PACS can send an instance as it holds it instead of converting it; the
C-GET SCU also asks for the SCP role of each storage SOP class (PS3.4 C.4.3).
"""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import ALL_TRANSFER_SYNTAXES, build_context, build_role
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.presentation import PresentationContext

from qrfarm.errors import PresentationContextError

from .model import VERIFICATION_SOP_CLASS, Operation, Root, sop_class

MAX_CONTEXTS = 128  # PS3.8: context IDs are odd numbers 1-255
# Storage Commitment Push Model (PS3.4 Annex J): the farm its SCU, in the default role.
STORAGE_COMMITMENT_PUSH = UID("1.2.840.10008.1.20.1")
QR_TRANSFER_SYNTAXES: list[str | UID] = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]

# What a C-GET asks to receive when it knows nothing of the study's content:
# the SOP classes that make up nearly all of a clinical archive.
DEFAULT_STORAGE_SOP_CLASSES: list[UID] = [
    UID(u)
    for u in (
        "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography
        "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray for presentation
        "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray for processing
        "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography for presentation
        "1.2.840.10008.5.1.4.1.1.2",  # CT
        "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT
        "1.2.840.10008.5.1.4.1.1.4",  # MR
        "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR
        "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound
        "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
        "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit SC
        "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC
        "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC
        "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
        "1.2.840.10008.5.1.4.1.1.12.1",  # X-Ray Angiographic
        "1.2.840.10008.5.1.4.1.1.12.2",  # X-Ray Radiofluoroscopic
        "1.2.840.10008.5.1.4.1.1.20",  # Nuclear Medicine
        "1.2.840.10008.5.1.4.1.1.128",  # PET
        "1.2.840.10008.5.1.4.1.1.13.1.3",  # Breast Tomosynthesis
        "1.2.840.10008.5.1.4.1.1.77.1.6",  # VL Whole Slide Microscopy
        "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
        "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
        "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
        "1.2.840.10008.5.1.4.1.1.88.67",  # X-Ray Radiation Dose SR
        "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
        "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
        "1.2.840.10008.5.1.4.1.1.66",  # Raw Data
        "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
        "1.2.840.10008.5.1.4.1.1.481.1",  # RT Image
        "1.2.840.10008.5.1.4.1.1.481.2",  # RT Dose
        "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
        "1.2.840.10008.5.1.4.1.1.481.5",  # RT Plan
    )
]


def qr_contexts(
    operations: Iterable[Operation], roots: Iterable[Root] = (Root.STUDY,)
) -> list[PresentationContext]:
    """One context per root and operation asked for (Verification for ECHO)."""
    contexts: list[PresentationContext] = []
    seen: set[str] = set()
    for root in roots:
        for operation in operations:
            uid = sop_class(root, operation)
            if uid not in seen:
                seen.add(uid)
                contexts.append(build_context(uid, QR_TRANSFER_SYNTAXES))
    return contexts


# Explicit VR Little Endian first and Implicit last: many acceptors take the
# first syntax they support in the proposer's order, and the explicit one is
# what archives hold most; compressed syntaxes follow, so that an instance
# held compressed can come as it is rather than be decompressed.
STORAGE_TRANSFER_SYNTAXES: list[str | UID] = [
    ExplicitVRLittleEndian,
    *[
        ts
        for ts in ALL_TRANSFER_SYNTAXES
        if ts not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    ],
    ImplicitVRLittleEndian,
]


def storage_contexts(sop_classes: Iterable[str]) -> list[PresentationContext]:
    """Storage contexts for a C-GET, each proposing every known transfer syntax."""
    contexts: list[PresentationContext] = []
    for uid in dict.fromkeys(UID(u) for u in sop_classes if u):
        contexts.append(build_context(uid, STORAGE_TRANSFER_SYNTAXES))
    return contexts


def scp_roles(contexts: Iterable[PresentationContext]) -> list[SCP_SCU_RoleSelectionNegotiation]:
    """The SCP role for each storage context: C-GET's sub-operations come our way."""
    qr = {VERIFICATION_SOP_CLASS, STORAGE_COMMITMENT_PUSH} | {
        sop_class(r, o) for r in Root for o in (Operation.FIND, Operation.GET, Operation.MOVE)
    }
    return [
        build_role(c.abstract_syntax, scp_role=True)
        for c in contexts
        if c.abstract_syntax is not None and c.abstract_syntax not in qr
    ]


def check_count(contexts: list[PresentationContext]) -> None:
    if not contexts:
        raise PresentationContextError("no presentation context asked for")
    if len(contexts) > MAX_CONTEXTS:
        raise PresentationContextError(
            f"{len(contexts)} presentation contexts asked for; an association holds at "
            f"most {MAX_CONTEXTS} (PS3.8 9.3.2.2)"
        )
