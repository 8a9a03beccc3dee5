"""Reading a Storage Commitment report: what it names, and what it cannot claim."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from qrfarm.dicom.commitment import COMMITTED, FAILURES_EXIST, parse_report

CT = "1.2.840.10008.5.1.4.1.1.2"


def _items(uids: list[str], reason: int | None = None) -> list[Dataset]:
    items = []
    for uid in uids:
        item = Dataset()
        item.ReferencedSOPClassUID = CT
        item.ReferencedSOPInstanceUID = uid
        if reason is not None:
            item.FailureReason = reason
        items.append(item)
    return items


def test_an_instance_reported_both_committed_and_failed_is_not_committed() -> None:
    info = Dataset()
    info.TransactionUID = "2.25.1"
    info.ReferencedSOPSequence = _items(["1.2.3.1", "1.2.3.2"])
    info.FailedSOPSequence = _items(["1.2.3.2"], reason=0x0112)
    report = parse_report(FAILURES_EXIST, info)
    assert report.committed == ["1.2.3.1"]
    assert report.failed == {"1.2.3.2": 0x0112}


def test_a_report_without_a_transaction_uid_is_refused_by_name() -> None:
    info = Dataset()
    info.ReferencedSOPSequence = _items(["1.2.3.1"])
    with pytest.raises(ValueError, match="Transaction UID"):
        parse_report(COMMITTED, info)
