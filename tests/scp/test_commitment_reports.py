"""Storage Commitment reports a destination sends the storage SCP on an
association of its own (as Orthanc always does), on either receive path."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from pynetdicom.presentation import build_context

from qrfarm.dicom.commitment import (
    COMMITTED,
    FAILURES_EXIST,
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH,
)
from qrfarm.jobs.nodes import NodeSpec, upsert_node
from qrfarm.models import CommitmentRequest
from qrfarm.scp import StorageScp
from tests.conftest import QRFARM_SCP_AE
from tests.scp.conftest import Db

CT = "1.2.840.10008.5.1.4.1.1.2"
UIDS = [f"1.2.826.0.1.3680043.10.1234.77.{n}" for n in range(3)]


def _request(
    db: Db, transaction_uid: str, node: str = "orthanc", ae_title: str = "ORTHANC"
) -> None:
    """A request the farm sent to ``node`` (AE title ``ae_title``)."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = "1.2.826.0.1.3680043.10.1234.77"
    job = db.new_move("orthanc", identifier, destination=ae_title)
    with db.sessions() as session, session.begin():
        session.add(
            CommitmentRequest(
                transaction_uid=transaction_uid,
                job_id=job.id,
                node_id=db.node_id(node),
                node_ae_title=ae_title,
                requested_count=len(UIDS),
                committed_uids=[],
                failed_uids={},
            )
        )


def _references(uids: list[str]) -> list[Dataset]:
    items = []
    for uid in uids:
        item = Dataset()
        item.ReferencedSOPClassUID = CT
        item.ReferencedSOPInstanceUID = uid
        items.append(item)
    return items


def _info(transaction_uid: str, uids: list[str]) -> Dataset:
    """A report's Event Information: the transaction and the instances committed."""
    info = Dataset()
    info.TransactionUID = transaction_uid
    if uids:
        info.ReferencedSOPSequence = _references(uids)
    return info


def _report(
    port: int, calling_ae: str, event_type: int, info: Dataset, syntax: str | None = None
) -> int | None:
    """Send one N-EVENT-REPORT as a destination does (a new association, the
    destination in the SCP role); the status answered, None if none came."""
    ae = AE(ae_title=calling_ae)
    if syntax is None:
        ae.add_requested_context(STORAGE_COMMITMENT_PUSH)
    else:
        ae.requested_contexts = [build_context(STORAGE_COMMITMENT_PUSH, [syntax])]
    role = build_role(STORAGE_COMMITMENT_PUSH, scu_role=False, scp_role=True)
    assoc = ae.associate("127.0.0.1", port, ae_title=QRFARM_SCP_AE, ext_neg=[role])
    assert assoc.is_established, "the storage SCP refused the association"
    accepted = assoc.accepted_contexts
    assert [str(cx.abstract_syntax) for cx in accepted] == [STORAGE_COMMITMENT_PUSH]
    try:
        status, _ = assoc.send_n_event_report(
            info, event_type, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE
        )
        return int(status.Status) if "Status" in status else None
    finally:
        if assoc.is_established:
            assoc.release()


def _row(db: Db, transaction_uid: str) -> CommitmentRequest:
    with db.sessions() as session:
        row = session.get(CommitmentRequest, transaction_uid)
        assert row is not None
        session.expunge(row)
        return row


def test_a_report_from_the_destination_asked_is_recorded(scp: StorageScp, db: Db) -> None:
    transaction = "2.25.3141592653589793"
    _request(db, transaction)
    info = _info(transaction, UIDS)
    assert _report(scp.port, "ORTHANC", COMMITTED, info) == 0x0000
    row = _row(db, transaction)
    assert row.reported_at is not None
    assert row.committed_uids == UIDS and row.failed_uids == {}


def test_a_report_with_failures_names_them_in_explicit_vr(scp: StorageScp, db: Db) -> None:
    transaction = "2.25.2718281828459045"
    _request(db, transaction)
    info = _info(transaction, UIDS[:2])
    failed = _references(UIDS[2:])
    failed[0].FailureReason = 0x0112
    info.FailedSOPSequence = failed
    explicit_vr = "1.2.840.10008.1.2.1"
    assert _report(scp.port, "ORTHANC", FAILURES_EXIST, info, explicit_vr) == 0x0000
    row = _row(db, transaction)
    assert row.committed_uids == UIDS[:2] and row.failed_uids == {UIDS[2]: 0x0112}


def test_a_report_from_another_node_or_on_no_request_is_refused(scp: StorageScp, db: Db) -> None:
    transaction = "2.25.1618033988749894"
    _request(db, transaction)
    info = _info(transaction, UIDS)
    # SANDBOX is a registered node (admitted to store) but was not asked.
    assert _report(scp.port, "SANDBOX", COMMITTED, info) == 0x0115
    unknown = _info("2.25.42", UIDS)
    assert _report(scp.port, "ORTHANC", COMMITTED, unknown) == 0x0115
    assert _row(db, transaction).reported_at is None


def test_a_report_of_an_unknown_event_type_is_refused(scp: StorageScp, db: Db) -> None:
    transaction = "2.25.1414213562373095"
    _request(db, transaction)
    info = _info(transaction, [])
    assert _report(scp.port, "ORTHANC", 7, info) == 0x0113
    assert _row(db, transaction).reported_at is None


def test_a_report_from_another_node_sharing_the_ae_title_is_refused(
    scp: StorageScp, db: Db
) -> None:
    """Two nodes may share an AE title (two sites' "PACS"): the report must come
    from the hosts of the node the request went to, not just under its title."""
    with db.sessions() as session, session.begin():
        # The node asked sits elsewhere; its namesake stores from here.
        upsert_node(session, NodeSpec("far", "SHARED", "127.0.0.2", 104))
        upsert_node(session, NodeSpec("near", "SHARED", "127.0.0.1", 104))
    scp.context.known_nodes.expire()
    far, near = "2.25.5772156649015328", "2.25.5772156649015329"
    _request(db, far, node="far", ae_title="SHARED")
    _request(db, near, node="near", ae_title="SHARED")
    for transaction in (far, near):
        info = _info(transaction, UIDS)
        expected = 0x0115 if transaction == far else 0x0000
        assert _report(scp.port, "SHARED", COMMITTED, info) == expected
    assert _row(db, far).reported_at is None
    assert _row(db, near).reported_at is not None


def test_a_report_larger_than_any_request_is_refused_and_records_nothing(
    scp: StorageScp, db: Db
) -> None:
    """50,000 references (about 4.5 MB): more than any request names
    (MAX_REFERENCES); the asyncio path does not even keep the bytes."""
    transaction = "2.25.6931471805599453"
    _request(db, transaction)
    many = [f"1.2.826.0.1.3680043.10.1234.78.{n}" for n in range(50_000)]
    status = _report(scp.port, "ORTHANC", COMMITTED, _info(transaction, many))
    assert status in (0x0115, 0x0213)  # Invalid Argument Value, Resource Limitation
    assert _row(db, transaction).reported_at is None
