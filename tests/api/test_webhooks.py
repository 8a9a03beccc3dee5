"""Webhooks: one correctly signed delivery per finished job, retried until a
receiver that was down comes back, every attempt recorded; callbacks aimed
inwards refused by the API where they enter."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

from sqlalchemy import select, update

from qrfarm.models import (
    DeliveryState,
    WebhookAttempt,
    WebhookDelivery,
    make_engine,
    session_factory,
    upgrade,
)
from qrfarm.notify.delivery import EVENT_HEADER, DeliveryPolicy, deliver_due
from qrfarm.notify.signing import ID_HEADER, new_secret, verify
from tests.peers.orthanc import OrthancPeer
from tests.peers.ports import free_port

from .conftest import WEBHOOK_SECRET, ApiFarm, WebhookReceiver
from .test_routes import wait_ended


def wait_for(condition: object, timeout: float = 30) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def start_farm(api_farm: ApiFarm, orthanc: OrthancPeer) -> None:
    farm = api_farm.farm
    farm.start_scp()
    farm.start("scheduler", "scheduler")
    farm.start_worker("orthanc")
    with api_farm.http() as http:
        node = {
            "name": "orthanc",
            "ae_title": orthanc.ae_title,
            "host": "127.0.0.1",
            "port": orthanc.port,
        }
        assert http.post("/nodes", json=node).status_code == 201


def submit_finds(api_farm: ApiFarm, callback: str, patients: list[str]) -> list[int]:
    with api_farm.http() as http:
        ids = []
        for patient in patients:
            response = http.post(
                "/jobs",
                json={
                    "kind": "find",
                    "node": "orthanc",
                    "level": "STUDY",
                    "keys": {"PatientID": patient},
                    "callback_url": callback,
                },
            )
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
        for job_id in ids:
            assert wait_ended(http, job_id)["state"] == "completed"
    return ids


def test_one_signed_delivery_per_finished_job(
    api_farm: ApiFarm, orthanc: OrthancPeer, receiver: WebhookReceiver
) -> None:
    start_farm(api_farm, orthanc)
    ids = submit_finds(api_farm, receiver.url, ["P001", "P002", "P003"])
    wait_for(lambda: len(receiver.deliveries) >= 3)
    time.sleep(2)  # a duplicate would come within a few delivery rounds
    assert len(receiver.deliveries) == 3
    for delivery in receiver.deliveries:
        headers = {k.lower(): v for k, v in delivery.headers.items()}
        assert delivery.path == "/hooks/qrfarm"
        assert verify(WEBHOOK_SECRET, headers, delivery.body)
        assert not verify(new_secret(), headers, delivery.body)
        assert headers[EVENT_HEADER.lower()] == "job.ended"
        assert headers[ID_HEADER].startswith("msg_")
        assert delivery.json()["job"]["state"] == "completed"
        # Ids, states and counts; never the identifier's patient keys.
        assert b"P00" not in delivery.body
    assert sorted(d.json()["job"]["id"] for d in receiver.deliveries) == sorted(ids)


def test_deliveries_arrive_after_the_receiver_was_down(
    api_farm: ApiFarm, orthanc: OrthancPeer, receiver: WebhookReceiver
) -> None:
    start_farm(api_farm, orthanc)
    receiver.stop()
    ids = submit_finds(api_farm, receiver.url, ["P004", "P005"])
    sessions = api_farm.farm.client.sessions

    def failed_attempts() -> int:
        with sessions() as session:
            return len(session.scalars(select(WebhookAttempt.delivery_id).distinct()).all())

    wait_for(lambda: failed_attempts() >= 2)  # both tried while nobody listened
    time.sleep(1)
    receiver.start()
    wait_for(lambda: len(receiver.deliveries) >= 2)
    time.sleep(2)
    assert sorted(d.json()["job"]["id"] for d in receiver.deliveries) == sorted(ids)
    with sessions() as session:
        deliveries = session.scalars(select(WebhookDelivery)).all()
        assert {d.state for d in deliveries} == {DeliveryState.DELIVERED}
        for delivery in deliveries:
            attempts = session.scalars(
                select(WebhookAttempt)
                .where(WebhookAttempt.delivery_id == delivery.id)
                .order_by(WebhookAttempt.number)
            ).all()
            assert len(attempts) >= 2
            assert attempts[0].status_code is None and attempts[0].error
            assert attempts[-1].status_code == 204 and attempts[-1].error is None
            assert [a.number for a in attempts] == list(range(1, len(attempts) + 1))


def test_a_delivery_gives_up_after_its_attempts_and_says_so(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    upgrade(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    with sessions() as session, session.begin():
        session.add(
            WebhookDelivery(
                event="job.ended", url=f"http://127.0.0.1:{free_port()}/hook", body="{}"
            )
        )
    policy = DeliveryPolicy(
        secret=new_secret(), allowed_hosts=("127.0.0.1",), max_attempts=2, timeout_s=2
    )
    for _ in range(2):
        report = deliver_due(sessions, policy)
        with sessions() as session, session.begin():
            # Due again now, instead of after the backoff.
            session.execute(update(WebhookDelivery).values(next_attempt_at=dt.datetime(2000, 1, 1)))
    assert report.gave_up == [1]
    with sessions() as session:
        delivery = session.get_one(WebhookDelivery, 1)
        assert delivery.state is DeliveryState.GAVE_UP and delivery.attempt_count == 2
        assert session.query(WebhookAttempt).count() == 2
    assert deliver_due(sessions, policy).delivered == []
    engine.dispose()


def test_callbacks_aimed_inwards_are_refused_where_they_enter(api_farm: ApiFarm) -> None:
    """The farm allows 127.0.0.1 (QRFARM_ALLOWED_HOSTS=127.0.0.1) and nothing
    else inside: a job's or a prefetch's callback elsewhere inside gets 422
    naming the address class. Only checked, never contacted."""
    refused = {
        "http://169.254.169.254/latest/meta-data/": "a cloud metadata address",
        "http://10.0.0.1/hook": "a private address",
        "http://localhost:9/hook": "a loopback address",  # a name, not the listed address
        "http://[::1]:9/hook": "a loopback address",
    }
    with api_farm.http() as http:
        for url, named in refused.items():
            job = {"kind": "find", "node": "nowhere", "level": "STUDY", "keys": {"PatientID": "P1"}}
            response = http.post("/jobs", json={**job, "callback_url": url})
            assert response.status_code == 422, response.text
            (error,) = response.json()["detail"]
            assert error["loc"] == ["body", "callback_url"] and named in error["msg"], error
            prefetch = {"patient_id": "P1", "rule": {"nodes": ["nowhere"]}, "callback_url": url}
            response = http.post("/prefetch", json=prefetch)
            assert response.status_code == 422 and named in response.text, response.text
