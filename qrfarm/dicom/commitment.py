"""Storage Commitment Push Model (PS3.4 Annex J) as the SCU: the request and the report.

The farm asks a destination (N-ACTION, Action Type 1) to commit to holding
a list of instances, under a Transaction UID of its own; the destination
answers with an N-EVENT-REPORT (Event Type 1: all committed; 2: failures
exist), on the same association if it is still open, or on a new one it
opens to the requestor's AE title as it knows it (Orthanc always opens a new
one, to the address its DicomModalities give for the calling AE title of
the request, taking the SCP role for the SOP class).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid
from pynetdicom import build_context
from pynetdicom.presentation import PresentationContext

from .contexts import QR_TRANSFER_SYNTAXES
from .contexts import STORAGE_COMMITMENT_PUSH as STORAGE_COMMITMENT_PUSH

# The well-known SOP Instance the N-ACTION and N-EVENT-REPORT address.
STORAGE_COMMITMENT_INSTANCE = UID("1.2.840.10008.1.20.1.1")
REQUEST_STORAGE_COMMITMENT = 1  # Action Type ID
COMMITTED = 1  # Event Type ID: every instance committed
FAILURES_EXIST = 2  # Event Type ID: some failed (Failed SOP Sequence)
# A request names at most this many instances: a study of any size fits,
# and the request stays a bounded data set (about 120 bytes an instance).
MAX_REFERENCES = 20_000


@dataclass(frozen=True)
class InstanceRef:
    """An instance by its SOP Class UID and SOP Instance UID."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class CommitmentReport:
    """What a destination reported for one transaction."""

    transaction_uid: str
    committed: list[str] = field(default_factory=list)
    # SOP Instance UID -> Failure Reason (0x0112: no such object instance...).
    failed: dict[str, int] = field(default_factory=dict)


def requestor_contexts() -> list[PresentationContext]:
    """The one context an N-ACTION association proposes (the farm as SCU)."""
    return [build_context(STORAGE_COMMITMENT_PUSH, QR_TRANSFER_SYNTAXES)]


def new_transaction_uid() -> str:
    # 2.25 (a UUID as a UID): Orthanc accepts only these as Transaction UIDs.
    return str(generate_uid(prefix=None))


def commitment_request(transaction_uid: str, refs: Sequence[InstanceRef]) -> Dataset:
    """The N-ACTION's Action Information: Transaction UID and Referenced SOP Sequence."""
    if not refs:
        raise ValueError("a storage commitment request names at least one instance")
    if len(refs) > MAX_REFERENCES:
        raise ValueError(f"{len(refs)} instances: a request names at most {MAX_REFERENCES}")
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    items = []
    for ref in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = ref.sop_class_uid
        item.ReferencedSOPInstanceUID = ref.sop_instance_uid
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


def parse_report(event_type: int | None, info: Dataset | None) -> CommitmentReport:
    """The report an N-EVENT-REPORT carries; ValueError naming what is wrong."""
    if event_type not in (COMMITTED, FAILURES_EXIST):
        raise ValueError(f"event type {event_type}: a storage commitment report is 1 or 2")
    if info is None or not info.get("TransactionUID"):
        raise ValueError("the report has no Transaction UID")
    committed = [
        str(item.get("ReferencedSOPInstanceUID", ""))
        for item in info.get("ReferencedSOPSequence", [])
    ]
    failed = {
        str(item.get("ReferencedSOPInstanceUID", "")): int(item.get("FailureReason", 0x0110))
        for item in info.get("FailedSOPSequence", [])
    }
    if "" in committed or "" in failed:
        raise ValueError("an item of the report has no Referenced SOP Instance UID")
    if len(committed) + len(failed) > MAX_REFERENCES:
        raise ValueError("the report names more instances than any request asks for")
    # Named both ways, an instance is not taken as committed.
    committed = [uid for uid in committed if uid not in failed]
    return CommitmentReport(str(info.TransactionUID), committed, failed)
