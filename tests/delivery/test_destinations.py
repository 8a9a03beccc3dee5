"""Moves to another node, verified there (issue 15, items 1 and 2).

Real peers on loopback: a source Orthanc; a destination Orthanc that answers
Storage Commitment (its report comes on a new association, to the farm's
storage SCP); one with commitment switched off for the farm
(AllowStorageCommitment false), verified by C-FIND; a sandbox destination
that answers success to its first C-STORE and keeps nothing. One embedded
farm (SQLite, filesystem broker) with storage SCP, worker, scheduler and HL7
listener serves every test of the module.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from sqlalchemy import select

from qrfarm.dicom import Level
from qrfarm.dicom.commitment import (
    COMMITTED,
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH,
)
from qrfarm.jobs import profiles
from qrfarm.jobs.nodes import NodeSpec
from qrfarm.models import CommitmentRequest, DeliveredInstance, NodeRecord, Prefetch
from qrfarm.sandbox.destination import SandboxDestination
from qrfarm.sandbox.synthetic import Corpus
from qrfarm.workflow.rules import Rule, save_rule
from tests.api.conftest import WEBHOOK_SECRET, WebhookReceiver
from tests.conftest import QRFARM_SCP_AE
from tests.farm.conftest import Farm, make_farm
from tests.peers import require_peer
from tests.peers.orthanc import ORTHANC_BINARIES, OrthancError, OrthancPeer
from tests.peers.ports import free_port, wait_for_port

TIMEOUT_S = 90.0


@dataclass
class World:
    farm: Farm
    source: OrthancPeer
    committing: OrthancPeer  # answers Storage Commitment
    finding: OrthancPeer  # commitment switched off for the farm
    forgetful: SandboxDestination
    hooks: WebhookReceiver
    hl7_port: int


def _farm_entry(scp_port: int, commitment: bool) -> dict[str, Any]:
    return {
        "AET": QRFARM_SCP_AE,
        "Host": "127.0.0.1",
        "Port": scp_port,
        "AllowStorageCommitment": commitment,
    }


@pytest.fixture(scope="module")
def world(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    binary = require_peer(*ORTHANC_BINARIES)
    tmp = tmp_path_factory.mktemp("delivery")
    scp_port = free_port()
    peers: list[OrthancPeer] = []
    forgetful = SandboxDestination(tmp / "forgetful", ae_title="FORGETFUL", forget=1)
    hooks = WebhookReceiver()
    hooks.start()
    try:
        # The destinations know the farm's SCP: where a report, and nothing
        # else, goes. The source knows every destination and the farm.
        for name, ae, commitment in (
            ("committing", "DESTSC", True),
            ("finding", "DESTFIND", False),
        ):
            peers.append(
                OrthancPeer.start(
                    binary,
                    tmp / name,
                    {},
                    ae_title=ae,
                    extra_config={"DicomModalities": {"farm": _farm_entry(scp_port, commitment)}},
                )
            )
        committing, finding = peers
        forgetful_port = forgetful.start()
        source = OrthancPeer.start(
            binary,
            tmp / "source",
            {
                QRFARM_SCP_AE: scp_port,
                committing.ae_title: committing.port,
                finding.ae_title: finding.port,
                forgetful.ae_title: forgetful_port,
            },
            ae_title="SOURCE",
        )
        peers.append(source)
        # Everything but the 300-instance study: small and quick to load.
        source.load(i.path for i in corpus.instances if i.study_uid != corpus.large_study_uid)
        with make_farm("embedded", tmp / "farm", scp_port) as farm:
            hl7_port = free_port()
            farm.env.update(
                {
                    # A partial job stays partial: the tests retry it by hand.
                    "QRFARM_RETRY_PARTIAL": "false",
                    "QRFARM_COMMITMENT_REPORT_TIMEOUT_S": "10",
                    "QRFARM_WEBHOOK_SECRET": WEBHOOK_SECRET,
                    "QRFARM_HL7_HOST": "127.0.0.1",
                    "QRFARM_HL7_PORT": str(hl7_port),
                    "QRFARM_HL7_RULES": json.dumps({"ORM^O01": "to-reading"}),
                }
            )
            farm.register(
                NodeSpec("source", source.ae_title, "127.0.0.1", source.port, role="source")
            )
            for name, peer in (("reading", committing), ("research", finding)):
                farm.register(
                    NodeSpec(name, peer.ae_title, "127.0.0.1", peer.port, role="destination")
                )
            farm.register(
                NodeSpec(
                    "forgetful", forgetful.ae_title, "127.0.0.1", forgetful_port, role="destination"
                )
            )
            with farm.client.sessions() as session, session.begin():
                save_rule(
                    session,
                    "to-reading",
                    Rule(
                        nodes=["source"],
                        max_studies=2,
                        destination="reading",
                        callback_url=hooks.url,
                    ),
                )
            farm.start_scp()
            farm.start_worker(concurrency=2)
            farm.start("scheduler", "scheduler")
            hl7 = farm.start("hl7", "hl7")
            if not wait_for_port(hl7_port, timeout=60, still_running=lambda: hl7.poll() is None):
                pytest.fail("qrfarm hl7 did not start:\n" + farm.logs())
            yield World(farm, source, committing, finding, forgetful, hooks, hl7_port)
    finally:
        hooks.stop()
        forgetful.stop()
        for peer in peers:
            peer.stop()


def _holds(peer: OrthancPeer, sop_uid: str) -> bool:
    try:
        peer.instance_id(sop_uid)
    except (KeyError, OrthancError):
        return False
    return True


def _study(corpus: Corpus, number: int) -> tuple[str, set[str]]:
    uid = f"1.2.826.0.1.3680043.10.1234.1.{number}"
    return uid, {i.sop_uid for i in corpus.studies()[uid]}


def _move(world: World, study: str, destination: str) -> dict[str, Any]:
    job_id = world.farm.client.move(
        "source", Level.STUDY, {"StudyInstanceUID": study}, destination=destination
    )
    return world.farm.wait(job_id, TIMEOUT_S)


def _profile(world: World, node: str) -> dict[str, Any]:
    with world.farm.client.sessions() as session:
        node_id = session.scalar(select(NodeRecord.id).where(NodeRecord.name == node))
        assert node_id is not None
        return profiles.profile(session, node_id)


def _confirmations(world: World, job_id: int) -> dict[str, str]:
    with world.farm.client.sessions() as session:
        rows = session.scalars(select(DeliveredInstance).where(DeliveredInstance.job_id == job_id))
        return {r.sop_instance_uid: r.verified_by for r in rows}


def test_a_move_to_a_committing_orthanc_is_completed_by_storage_commitment(
    world: World, corpus: Corpus
) -> None:
    study, instances = _study(corpus, 4)
    job = _move(world, study, "reading")
    assert job["state"] == "completed", (job, world.farm.logs())
    assert job["verified_by"] == "commitment"
    assert job["confirmed"] == job["expected"] == len(instances)
    assert job["recorded"] == 0  # nothing came to the farm
    assert job["destination"] == world.committing.ae_title
    assert all(_holds(world.committing, uid) for uid in instances)
    assert set(_confirmations(world, job["id"]).items()) == {(u, "commitment") for u in instances}
    # The report came on an association of the destination's own, to the SCP.
    with world.farm.client.sessions() as session:
        requests = list(
            session.scalars(select(CommitmentRequest).where(CommitmentRequest.job_id == job["id"]))
        )
    assert len(requests) == 1 and requests[0].reported_at is not None
    assert set(requests[0].committed_uids) == instances and not requests[0].failed_uids
    assert _profile(world, "reading")["supports_storage_commitment"] is True


def test_a_move_to_an_orthanc_without_commitment_is_completed_by_c_find(
    world: World, corpus: Corpus
) -> None:
    study, instances = _study(corpus, 5)
    job = _move(world, study, "research")
    assert job["state"] == "completed", (job, world.farm.logs())
    assert job["verified_by"] == "find"
    assert job["confirmed"] == job["expected"] == len(instances)
    assert all(_holds(world.finding, uid) for uid in instances)
    profile = _profile(world, "research")
    assert profile["supports_storage_commitment"] is False
    assert profile["answers_image_find"] is True
    # Learned: the next move there goes straight to C-FIND, no request.
    study, instances = _study(corpus, 3)
    again = _move(world, study, "research")
    assert again["state"] == "completed" and again["verified_by"] == "find"
    with world.farm.client.sessions() as session:
        asked = session.scalars(
            select(CommitmentRequest.transaction_uid).where(CommitmentRequest.job_id == again["id"])
        ).all()
    assert asked == []


def test_a_destination_that_drops_one_instance_ends_partial_and_the_retry_moves_only_it(
    world: World, corpus: Corpus
) -> None:
    study, instances = _study(corpus, 6)
    job = _move(world, study, "forgetful")
    [dropped] = world.forgetful.forgotten
    assert job["state"] == "partial", (job, world.farm.logs())
    assert job["missing_uids"] == [dropped]
    assert job["confirmed"] == len(instances) - 1
    assert "1 of 4 expected instance(s) not confirmed" in job["error"]
    assert world.forgetful.held == instances - {dropped}
    sent_before = sum(world.forgetful.stores.values())

    world.farm.client.retry(job["id"])
    retried = world.farm.wait(job["id"], TIMEOUT_S)
    assert retried["state"] == "completed", (retried, world.farm.logs())
    # The source was asked for that one instance only, and sent nothing else.
    assert sum(world.forgetful.stores.values()) == sent_before + 1
    assert world.forgetful.stores[dropped] == 2
    assert retried["confirmed"] == len(instances) and retried["missing_uids"] == []
    assert world.forgetful.held == instances


def _hl7(control_id: str, patient_id: str, accession: str) -> str:
    segments = [
        f"MSH|^~\\&|RIS|HOSP|QRFARM|PACS|20240102030405||ORM^O01|{control_id}|P|2.5",
        f"PID|1||{patient_id}||DOE^JOHN||19600101|M",
        "PV1|1|O",
        f"ORC|NW|{accession}|FILLER-{accession}",
        "|".join(["OBR", "1", accession, f"F{accession}", "CT^CT", *[""] * 13, accession]),
    ]
    return "".join(f"{s}\r" for s in segments)


def _mllp(port: int, text: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"\x0b" + text.encode("utf-8") + b"\x1c\r")
        answer = b""
        while not answer.endswith(b"\x1c\r"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer.strip(b"\x0b\x1c\r").decode("utf-8")


def test_an_hl7_order_lands_the_priors_in_the_reading_orthanc_and_its_webhook_says_so(
    world: World, corpus: Corpus
) -> None:
    ack = _mllp(world.hl7_port, _hl7("DELIVER-1", "P001", "ACC-DELIVER-1"))
    assert "|AA|" in ack, ack
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        bodies = [json.loads(d.body) for d in world.hooks.deliveries]
        ended = [b for b in bodies if b.get("event") == "prefetch.ended"]
        if ended:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"no prefetch webhook:\n{world.farm.logs()}")
    [body] = ended
    prefetch = body["prefetch"]
    # The two newest of P001's three studies (the order's accession matches
    # none: all three are priors); the webhook names no study, the prefetch does.
    with world.farm.client.sessions() as session:
        row = session.scalar(select(Prefetch).where(Prefetch.id == prefetch["id"]))
        assert row is not None
        chosen = [s["study_instance_uid"] for s in row.selected]
    dates = {i.study_uid: i.study_date for i in corpus.patients()["P001"]}
    assert sorted(chosen) == sorted(sorted(dates, key=dates.__getitem__)[-2:])
    # Every instance of them is in the destination.
    wanted = {i.sop_uid for uid in chosen for i in corpus.studies()[uid]}
    assert all(_holds(world.committing, uid) for uid in wanted)
    assert prefetch["state"] == "completed", (prefetch, world.farm.logs())
    assert prefetch["destination"] == "reading"
    assert prefetch["delivered"] == len(wanted)
    moves = [j for j in prefetch["jobs"] if j["kind"] == "move"]
    assert len(moves) == 2
    assert all(j["state"] == "completed" for j in moves)
    assert all(j["destination"] == world.committing.ae_title for j in moves)
    assert all(j["verified_by"] == "commitment" for j in moves)  # the reading Orthanc commits
    assert sum(j["confirmed"] for j in moves) == len(wanted)
    assert prefetch["recorded"] == 0  # nothing was stored by the farm


def test_a_source_only_node_is_refused_as_a_destination_and_a_destination_as_a_source(
    world: World, corpus: Corpus
) -> None:
    study, _ = _study(corpus, 4)
    with pytest.raises(Exception, match="not as a destination"):
        world.farm.client.move(
            "reading", Level.STUDY, {"StudyInstanceUID": study}, destination="source"
        )
    with pytest.raises(Exception, match="destination only"):
        world.farm.client.move("reading", Level.STUDY, {"StudyInstanceUID": study})


def _report(scp_port: int, calling_ae: str, transaction_uid: str, uids: list[str]) -> int:
    """An N-EVENT-REPORT sent to the farm's storage SCP as a destination sends
    one (a new association, the sender in the SCP role); the status answered."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(STORAGE_COMMITMENT_PUSH)
    role = build_role(STORAGE_COMMITMENT_PUSH, scu_role=False, scp_role=True)
    assoc = ae.associate("127.0.0.1", scp_port, ae_title=QRFARM_SCP_AE, ext_neg=[role])
    assert assoc.is_established, "the storage SCP refused the association"
    info = Dataset()
    info.TransactionUID = transaction_uid
    items = []
    for uid in uids:
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        item.ReferencedSOPInstanceUID = uid
        items.append(item)
    info.ReferencedSOPSequence = items
    try:
        status, _ = assoc.send_n_event_report(
            info, COMMITTED, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE
        )
        return int(status.Status)
    finally:
        assoc.release()


def test_a_report_is_taken_only_from_the_destination_asked(world: World, corpus: Corpus) -> None:
    study, instances = _study(corpus, 4)
    job = _move(world, study, "reading")  # the study is there already: a quick job
    assert job["state"] == "completed"
    transaction = "2.25.1234567890123456789"
    with world.farm.client.sessions() as session, session.begin():
        node_id = session.scalar(select(NodeRecord.id).where(NodeRecord.name == "reading"))
        assert node_id is not None
        session.add(
            CommitmentRequest(
                transaction_uid=transaction,
                job_id=job["id"],
                node_id=node_id,
                node_ae_title=world.committing.ae_title,
                requested_count=1,
                committed_uids=[],
                failed_uids={},
            )
        )
    scp_port = int(world.farm.env["QRFARM_SCP_PORT"])
    uid = sorted(instances)[0]
    # Another registered node (admitted to store) cannot confirm for it...
    assert _report(scp_port, world.forgetful.ae_title, transaction, [uid]) == 0x0115
    # ...nor can anyone report on a transaction the farm never started.
    assert _report(scp_port, world.committing.ae_title, "2.25.42", [uid]) == 0x0115
    with world.farm.client.sessions() as session:
        row = session.get(CommitmentRequest, transaction)
        assert row is not None and row.reported_at is None and row.committed_uids == []
    assert _report(scp_port, world.committing.ae_title, transaction, [uid]) == 0x0000
    with world.farm.client.sessions() as session:
        row = session.get(CommitmentRequest, transaction)
        assert row is not None and row.reported_at is not None and row.committed_uids == [uid]
