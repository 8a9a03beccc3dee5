"""Prefetch end to end: a patient with five prior studies on two PACS (Orthanc,
which gives ModalitiesInStudy and counts, and dcmqrscp, which gives neither),
a rule that wants the last three CTs: exactly those are moved, the one already
held is not, and the prefetch ends completed with a webhook. An HL7 ORM^O01
over MLLP starts the same prefetch."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hl7.client import MLLPClient
from sqlalchemy import select

from qrfarm.dicom import Level
from qrfarm.models import Job, JobKind, ReceivedInstance
from qrfarm.notify.signing import verify
from tests.peers import require_peer
from tests.peers.dcmqrscp import DCMQRSCP, STORESCU, DcmqrscpPeer
from tests.peers.orthanc import ORTHANC_BINARIES, OrthancPeer
from tests.peers.ports import free_port, wait_for_port

from .conftest import WEBHOOK_SECRET, ApiFarm, WebhookReceiver
from .priors import PriorStudy, write_study

PATIENT = "PF0001"
STUDIES = [
    PriorStudy(1, "20260301", "CT", "CT CHEST", 3, "orthanc"),
    PriorStudy(2, "20250901", "MR", "MR HEAD", 2, "orthanc"),
    PriorStudy(3, "20230115", "CT", "CT ABDOMEN", 2, "orthanc"),
    PriorStudy(4, "20251101", "CT", "CT CHEST", 3, "dcmqrscp"),
    PriorStudy(5, "20240610", "CT", "CT CHEST", 2, "dcmqrscp"),
    # The study being ordered: never one of its own priors.
    PriorStudy(6, "20261130", "CT", "CT CHEST", 1, "orthanc"),
]
ORDERED = STUDIES[5]
LAST_THREE_CTS = {STUDIES[0].uid, STUDIES[3].uid, STUDIES[4].uid}
RULE = {"nodes": ["orthanc", "dcmqrscp"], "modalities": ["CT"], "max_studies": 3}


@dataclass
class TwoPacs:
    orthanc: OrthancPeer
    dcmqrscp: DcmqrscpPeer


@pytest.fixture(scope="module")
def two_pacs(
    tmp_path_factory: pytest.TempPathFactory, move_destinations: dict[str, int]
) -> Iterator[TwoPacs]:
    binary = require_peer(*ORTHANC_BINARIES)
    require_peer(DCMQRSCP)
    require_peer(STORESCU)
    root = tmp_path_factory.mktemp("priors")
    files: dict[str, list[Path]] = {"orthanc": [], "dcmqrscp": []}
    for study in STUDIES:
        files[study.pacs] += write_study(root / study.pacs, PATIENT, study)
    orthanc = OrthancPeer.start(binary, root / "orthanc-peer", move_destinations)
    try:
        dcmqrscp = DcmqrscpPeer.start(root / "dcmqrscp-peer", move_destinations)
        try:
            orthanc.load(files["orthanc"])
            dcmqrscp.load(root / "dcmqrscp")
            yield TwoPacs(orthanc, dcmqrscp)
        finally:
            dcmqrscp.stop()
    finally:
        orthanc.stop()


def start_farm(api_farm: ApiFarm, pacs: TwoPacs) -> None:
    farm = api_farm.farm
    farm.start_scp()
    farm.start("scheduler", "scheduler")
    farm.start_worker("orthanc", "dcmqrscp")
    with api_farm.http() as http:
        for name, peer in (("orthanc", pacs.orthanc), ("dcmqrscp", pacs.dcmqrscp)):
            node = {"name": name, "ae_title": peer.ae_title, "host": "127.0.0.1", "port": peer.port}
            assert http.post("/nodes", json=node).status_code == 201
        assert http.put("/prefetch-rules/last-three-cts", json=RULE).status_code == 200


def wait_prefetch(api_farm: ApiFarm, prefetch_id: int, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with api_farm.http() as http:
        while time.monotonic() < deadline:
            summary: dict[str, Any] = http.get(f"/prefetch/{prefetch_id}").json()
            if summary["ended"]:
                return summary
            time.sleep(0.3)
    print(api_farm.farm.logs())
    raise AssertionError(f"prefetch {prefetch_id} did not end: {summary}")


def moved_studies(api_farm: ApiFarm, prefetch_id: int) -> set[str]:
    with api_farm.farm.client.sessions() as session:
        moves = session.scalars(
            select(Job).where(Job.prefetch_id == prefetch_id, Job.kind == JobKind.MOVE)
        ).all()
        return {job.identifier["0020000D"]["Value"][0] for job in moves}


def recorded_studies(api_farm: ApiFarm) -> dict[str, int]:
    with api_farm.farm.client.sessions() as session:
        rows = session.scalars(select(ReceivedInstance)).all()
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.study_instance_uid] = counts.get(row.study_instance_uid, 0) + 1
    return counts


def test_the_last_three_cts_are_moved_except_the_one_already_held(
    api_farm: ApiFarm, two_pacs: TwoPacs, receiver: WebhookReceiver
) -> None:
    start_farm(api_farm, two_pacs)
    held = STUDIES[3]  # on dcmqrscp, which gives no instance counts
    already = api_farm.farm.wait(
        api_farm.farm.client.move("dcmqrscp", Level.STUDY, {"StudyInstanceUID": held.uid})
    )
    assert already["state"] == "completed", already

    with api_farm.http() as http:
        response = http.post(
            "/prefetch",
            json={
                "patient_id": PATIENT,
                "rule_name": "last-three-cts",
                "current_accession": ORDERED.accession,
                "callback_url": receiver.url,
            },
            headers={"Idempotency-Key": "order-4711"},
        )
        assert response.status_code == 201, response.text
        again = http.post(
            "/prefetch",
            json={
                "patient_id": PATIENT,
                "rule_name": "last-three-cts",
                "current_accession": ORDERED.accession,
                "callback_url": receiver.url,
            },
            headers={"Idempotency-Key": "order-4711"},
        )
        assert again.status_code == 200 and again.json()["id"] == response.json()["id"]
        # Another patient under the same key: refused, the earlier prefetch not shown.
        other = http.post(
            "/prefetch",
            json={"patient_id": "SOMEONE-ELSE", "rule_name": "last-three-cts"},
            headers={"Idempotency-Key": "order-4711"},
        )
        assert other.status_code == 409 and PATIENT not in other.text, other.text
    summary = wait_prefetch(api_farm, response.json()["id"])

    assert summary["state"] == "completed", summary
    assert {s["study_instance_uid"] for s in summary["selected"]} == LAST_THREE_CTS
    assert [s["study_instance_uid"] for s in summary["selected"] if s["already_held"]] == [held.uid]
    assert moved_studies(api_farm, summary["id"]) == LAST_THREE_CTS - {held.uid}
    assert summary["studies"] == {"selected": 3, "already_held": 1, "moved": 2}
    recorded = recorded_studies(api_farm)
    assert recorded == {s.uid: s.instances for s in STUDIES if s.uid in LAST_THREE_CTS}

    deadline = time.monotonic() + 30
    while not receiver.deliveries and time.monotonic() < deadline:
        time.sleep(0.1)
    [delivery] = [d for d in receiver.deliveries if d.json()["event"] == "prefetch.ended"]
    assert delivery.json()["prefetch"]["state"] == "completed"
    assert delivery.json()["prefetch"]["id"] == summary["id"]
    assert verify(WEBHOOK_SECRET, delivery.headers, delivery.body)
    # Ids, states and counts: the rule asks for no patient keys.
    assert PATIENT.encode() not in delivery.body
    assert ORDERED.accession.encode() not in delivery.body
    assert delivery.json()["prefetch"]["studies"] == summary["studies"]


def test_an_hl7_order_starts_the_prefetch_and_gets_an_ack(
    api_farm: ApiFarm, two_pacs: TwoPacs
) -> None:
    start_farm(api_farm, two_pacs)
    farm = api_farm.farm
    port = free_port()
    listener = farm.start(
        "hl7",
        "hl7",
        env={"QRFARM_HL7_PORT": str(port), "QRFARM_HL7_RULES": '{"ORM^O01": "last-three-cts"}'},
    )
    assert wait_for_port(port, timeout=30, still_running=lambda: listener.poll() is None)
    order = "\r".join(
        [
            "MSH|^~\\&|RIS|HOSP|QRFARM|HOSP|20261201090000||ORM^O01|MSG00042|P|2.3.1",
            f"PID|1||{PATIENT}^^^HOSP^MR||Prior^Patient||19550505|O",
            "ORC|NW|PLC42|FIL42",
            f"OBR|1|PLC42|FIL42|CTCHEST^CT CHEST||||||||||||||{ORDERED.accession}",
        ]
    )
    with MLLPClient("127.0.0.1", port) as client:
        ack = client.send_message(order).decode()
        nak = client.send_message("this is not HL7 at all").decode()
    msa = next(seg for seg in ack.strip("\x0b\x1c\r").split("\r") if seg.startswith("MSA"))
    assert msa.startswith("MSA|AA|MSG00042|prefetch "), ack
    prefetch_id = int(msa.split("prefetch ")[1])
    assert "MSA|AR|" in nak
    summary = wait_prefetch(api_farm, prefetch_id)
    assert summary["state"] == "completed", summary
    assert summary["current_accession"] == ORDERED.accession
    assert moved_studies(api_farm, prefetch_id) == LAST_THREE_CTS
    with farm.client.sessions() as session:
        # The garbled message started nothing: one prefetch, its own jobs only.
        assert {j.prefetch_id for j in session.scalars(select(Job))} == {prefetch_id}
