"""What a failed Storage Commitment request teaches the farm about a destination."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.delivery import asking, commitment
from qrfarm.delivery.commitment import (
    CommitmentReport,
    CommitmentSettings,
    handle_report,
    request_commitment,
)
from qrfarm.delivery.verification import DeliveryVerifier, verify_delivery
from qrfarm.dicom import Node, Timeouts
from qrfarm.dicom.commitment import (
    COMMITTED,
    MAX_REFERENCES,
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH,
    InstanceRef,
    commitment_request,
)
from qrfarm.errors import CommitmentUnavailable, NodeBusy, QrfarmError
from qrfarm.jobs import profiles
from qrfarm.jobs.leases import claim
from qrfarm.jobs.policy import JobPolicy
from qrfarm.jobs.states import transition
from qrfarm.models import CommitmentRequest, ExpectedInstance, Job, JobState, NodeRecord, utcnow
from qrfarm.sandbox.destination import SandboxDestination
from qrfarm.workers.permits import FilePermits
from qrfarm.workers.pool import AssociationPool
from tests.jobs.conftest import add_job, sessions  # noqa: F401  (a fixture)
from tests.peers.ports import free_port

CT = "1.2.840.10008.5.1.4.1.1.2"
SETTINGS = CommitmentSettings(
    calling_ae="QRFARMSCP", report_timeout_s=1.0, timeouts=Timeouts(connect=2.0, acse=5.0)
)


def _ask(sessions: sessionmaker[Session], node: Node) -> CommitmentUnavailable:  # noqa: F811
    job_id = add_job(sessions)
    with sessions() as session:
        node_id = session.scalar(select(NodeRecord.id).where(NodeRecord.name == "pacs"))
    assert node_id is not None
    with pytest.raises(CommitmentUnavailable) as raised:
        request_commitment(
            sessions,
            SETTINGS,
            job_id=job_id,
            node_id=node_id,
            node=node,
            refs=[InstanceRef(CT, "1.2.826.0.1.3680043.10.1234.9.9")],
        )
    with sessions() as session:
        # The request was recorded before it went out, and nothing reported on it.
        rows = session.scalars(select(CommitmentRequest).where(CommitmentRequest.job_id == job_id))
        assert [r.reported_at for r in rows] == [None]
    return raised.value


def test_a_destination_that_is_down_says_nothing_of_its_commitment(
    sessions: sessionmaker[Session],  # noqa: F811
) -> None:
    error = _ask(sessions, Node("DEST", "127.0.0.1", free_port()))
    assert not error.unsupported


def test_a_destination_that_refuses_the_commitment_association_does_not_commit(
    sessions: sessionmaker[Session],  # noqa: F811
    tmp_path: Path,
) -> None:
    destination = SandboxDestination(tmp_path / "dest", ae_title="DEST")
    port = destination.start()
    try:
        error = _ask(sessions, Node("DEST", "127.0.0.1", port))
    finally:
        destination.stop()
    assert error.unsupported


def _node_id(sessions: sessionmaker[Session]) -> int:  # noqa: F811
    add_job(sessions)  # makes node "pacs"
    with sessions() as session:
        node_id = session.scalar(select(NodeRecord.id).where(NodeRecord.name == "pacs"))
    assert node_id is not None
    return node_id


def test_a_destination_learned_not_to_commit_is_asked_again_after_the_recheck_time(
    sessions: sessionmaker[Session],  # noqa: F811
) -> None:
    node_id = _node_id(sessions)
    day = 86_400.0
    seen_at = time.time()
    with sessions() as session, session.begin():
        profiles.observe(session, node_id, profiles.SUPPORTS_COMMITMENT, False, now=seen_at)
    with sessions() as session:
        assert profiles.trait(session, node_id, profiles.SUPPORTS_COMMITMENT) is False
        ask = profiles.worth_asking
        assert not ask(session, node_id, profiles.SUPPORTS_COMMITMENT, day, now=seen_at + 60)
        assert ask(session, node_id, profiles.SUPPORTS_COMMITMENT, day, now=seen_at + day + 1)
    # Asked again, it commits now (switched on meanwhile): its latest word
    # stands, however often it said otherwise before.
    with sessions() as session, session.begin():
        for _ in range(3):
            profiles.observe(session, node_id, profiles.SUPPORTS_COMMITMENT, False, now=seen_at)
        profiles.observe(session, node_id, profiles.SUPPORTS_COMMITMENT, True, now=seen_at + day)
    with sessions() as session:
        assert profiles.trait(session, node_id, profiles.SUPPORTS_COMMITMENT) is True


def test_the_commitment_association_waits_for_one_of_the_destinations_permits(
    sessions: sessionmaker[Session],  # noqa: F811
    tmp_path: Path,
) -> None:
    """Its association counts against the destination's limit like any other:
    with the only permit held elsewhere, no association is opened."""
    destination = SandboxDestination(tmp_path / "dest", ae_title="DEST")
    port = destination.start()
    permits = FilePermits(tmp_path / "permits")
    holder = AssociationPool(permits, "QRFARM", Timeouts())
    asker = AssociationPool(permits, "QRFARM", Timeouts())
    node = Node("DEST", "127.0.0.1", port, max_associations=1)
    try:
        with holder.held(node):
            busy = _ask_holding(sessions, node, lambda: asker.held(node))
            assert isinstance(busy, NodeBusy)
            assert destination.associations == 0
        # The permit free, the request goes out (and the sandbox refuses it).
        error = _ask_holding(sessions, node, lambda: asker.held(node))
        assert isinstance(error, CommitmentUnavailable) and error.unsupported
        assert destination.associations == 1
    finally:
        holder.close()
        asker.close()
        destination.stop()


def _ask_holding(
    sessions: sessionmaker[Session],  # noqa: F811
    node: Node,
    hold: Callable[[], AbstractContextManager[object]],
) -> QrfarmError:
    with sessions() as session:
        node_id = session.scalar(select(NodeRecord.id).where(NodeRecord.name == "pacs"))
    if node_id is None:
        node_id = _node_id(sessions)
    with pytest.raises(QrfarmError) as raised:
        request_commitment(
            sessions,
            SETTINGS,
            job_id=add_job(sessions),
            node_id=node_id,
            node=node,
            refs=[InstanceRef(CT, "1.2.826.0.1.3680043.10.1234.9.9")],
            hold=hold,
        )
    return raised.value


def test_a_report_recorded_meanwhile_is_what_the_requester_reads(
    sessions: sessionmaker[Session],  # noqa: F811
) -> None:
    """The requester waits for the row (on PostgreSQL it hears of it when it
    commits): the report another thread records is the one it gets."""
    node_id = _node_id(sessions)
    job_id = add_job(sessions)
    transaction = "2.25.9876543210"
    with sessions() as session, session.begin():
        session.add(
            CommitmentRequest(
                transaction_uid=transaction,
                job_id=job_id,
                node_id=node_id,
                node_ae_title="PACS",
                requested_count=1,
                committed_uids=[],
                failed_uids={},
            )
        )
    info = Dataset()
    info.TransactionUID = transaction
    item = Dataset()
    item.ReferencedSOPClassUID = CT
    item.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.10.1234.9.9"
    info.ReferencedSOPSequence = [item]
    statuses: list[int] = []
    reporter = threading.Timer(
        0.3, lambda: statuses.append(handle_report(sessions, "PACS", COMMITTED, info, [node_id]))
    )
    reporter.start()
    try:
        report = commitment._wait(sessions, transaction, 10.0)
    finally:
        reporter.join()
    assert statuses == [0x0000]
    assert report is not None and report.committed == ["1.2.826.0.1.3680043.10.1234.9.9"]
    assert commitment._wait(sessions, "2.25.1", 0.2) is None  # none comes: None at the deadline


def test_a_destination_too_busy_for_another_association_is_not_learned_as_not_committing(
    sessions: sessionmaker[Session],  # noqa: F811
) -> None:
    """A-ASSOCIATE-RJ "local limit exceeded" (transient) says nothing of
    Storage Commitment: the destination is asked again next time."""
    busy = AE(ae_title="DEST")
    busy.add_supported_context(STORAGE_COMMITMENT_PUSH)
    busy.add_supported_context("1.2.840.10008.1.1")
    busy.maximum_associations = 1
    server = busy.start_server(("127.0.0.1", 0), block=False)
    port = int(server.socket.getsockname()[1])  # type: ignore[union-attr]
    holder = AE(ae_title="OTHER")
    holder.add_requested_context("1.2.840.10008.1.1")
    held = holder.associate("127.0.0.1", port, ae_title="DEST")
    try:
        assert held.is_established
        error = _ask(sessions, Node("DEST", "127.0.0.1", port))
    finally:
        held.release()
        server.shutdown()
    assert not error.unsupported, error


def test_more_instances_than_one_request_may_name_are_asked_for_in_several(
    sessions: sessionmaker[Session],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request names at most MAX_REFERENCES instances (the codec refuses more):
    a larger delivery is asked for in requests of that size, and what all of
    them commit to is the answer."""
    node_id = _node_id(sessions)
    job_id = add_job(sessions)
    asked: list[int] = []

    def answer_all(*_args: object, refs: list[InstanceRef], **_kwargs: object) -> CommitmentReport:
        commitment_request("2.25.1", refs)  # what would go out: the codec's bound holds
        asked.append(len(refs))
        return CommitmentReport("2.25.1", [r.sop_instance_uid for r in refs], {})

    monkeypatch.setattr(asking, "request_commitment", answer_all)
    refs = [InstanceRef(CT, f"1.2.826.0.1.3680043.10.1234.{n}") for n in range(MAX_REFERENCES + 5)]
    deps = SimpleNamespace(sessions=sessions, connections=SimpleNamespace(held=None))
    committed = asking.committed_at(
        deps,  # type: ignore[arg-type]
        SETTINGS,
        job_id=job_id,
        node_id=node_id,
        node=Node("DEST", "127.0.0.1", 1),
        refs=refs,
    )
    assert asked == [MAX_REFERENCES, 5]
    assert committed == {r.sop_instance_uid for r in refs}


def test_a_report_on_the_requesting_association_is_recorded(
    sessions: sessionmaker[Session],  # noqa: F811
) -> None:
    """PS3.4 J.3.3: a destination may send its N-EVENT-REPORT on the
    association that carried the N-ACTION, before the requester releases it.
    No storage SCP of the farm listens here: only that association can bring
    the report, and the request ends with it, answered Success."""
    node_id = _node_id(sessions)
    uid = "1.2.826.0.1.3680043.10.1234.9.7"
    answered: list[int] = []

    def report_on_same_association(event: Any) -> None:
        request = event.action_information
        info = Dataset()
        info.TransactionUID = request.TransactionUID
        info.ReferencedSOPSequence = request.ReferencedSOPSequence
        status, _ = event.assoc.send_n_event_report(
            info, COMMITTED, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE
        )
        answered.append(int(status.Status))

    def on_action(event: Any) -> tuple[int, None]:
        # The report follows the N-ACTION's answer: sent from a thread of its own.
        threading.Timer(0.1, report_on_same_association, args=(event,)).start()
        return 0x0000, None

    destination = AE(ae_title="DEST")
    destination.add_supported_context(STORAGE_COMMITMENT_PUSH)
    server = destination.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_N_ACTION, on_action)]
    )
    port = int(server.socket.getsockname()[1])  # type: ignore[union-attr]
    try:
        report = request_commitment(
            sessions,
            SETTINGS,
            job_id=add_job(sessions),
            node_id=node_id,
            node=Node("DEST", "127.0.0.1", port),
            refs=[InstanceRef(CT, uid)],
        )
    finally:
        server.shutdown()
    assert report.committed == [uid]
    assert answered == [0x0000]


def test_a_destination_busy_at_the_first_round_is_asked_for_its_commitment_again(
    sessions: sessionmaker[Session],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No permit free for the commitment request (the confirmation alongside
    the move still holds one) says nothing of Storage Commitment: the next
    round asks again, and the move is completed by commitment, where it was
    left to C-FIND (which this destination does not answer) and ended partial."""
    node_id = _node_id(sessions)
    uids = [f"1.2.826.0.1.3680043.10.1234.8.{n}" for n in range(3)]
    job_id = add_job(sessions, destination_node_id=node_id)
    with sessions() as session, session.begin():
        taken, job = claim(session, job_id, "test-worker", JobPolicy()) or (None, None)
        assert taken is not None and job is not None
        session.add_all(
            ExpectedInstance(job_id=job_id, sop_instance_uid=uid, sop_class_uid=CT) for uid in uids
        )
        job.expected_count, job.root = len(uids), "study"
        transition(job, JobState.RECONCILING)
        job.reconcile_until = utcnow() + dt.timedelta(seconds=10)
    asked: list[int] = []

    def busy_then_committed(*_args: object, refs: list[InstanceRef], **_kw: object) -> object:
        asked.append(len(refs))
        if len(asked) == 1:
            raise NodeBusy("DEST: all 1 permits are taken")
        return CommitmentReport("2.25.2", [r.sop_instance_uid for r in refs], {})

    def no_find(_node: Node) -> object:
        raise QrfarmError("this destination answers no C-FIND")

    monkeypatch.setattr(asking, "request_commitment", busy_then_committed)
    deps = SimpleNamespace(
        sessions=sessions,
        connections=SimpleNamespace(held=None, query_retrieve=no_find),
        policy=JobPolicy(retry_partial=False),
    )
    state = verify_delivery(deps, taken, DeliveryVerifier(SETTINGS, poll_s=0.05))  # type: ignore[arg-type]
    with sessions() as session:
        job = session.get_one(Job, job_id)
        assert (state, job.verified_by, job.confirmed_count) == (
            JobState.COMPLETED,
            "commitment",
            3,
        )
    assert asked == [3, 3]
