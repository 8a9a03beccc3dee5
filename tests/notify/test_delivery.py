"""Delivering webhooks: the host resolved at delivery and checked again, the
connection made to the address checked (Host, SNI and the certificate for the
name), an overall deadline, a capped read of the answer, and one slow
receiver never holding up the others."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.models import (
    DeliveryState,
    WebhookAttempt,
    WebhookDelivery,
    make_engine,
    session_factory,
    upgrade,
)
from qrfarm.notify.delivery import DeliveryPolicy, deliver_due, run_deliveries
from qrfarm.notify.signing import new_secret

from .fakes import FakeNetwork
from .receivers import Endless, Recorder, Silent, certificate_for

SECRET = new_secret()
POLICY = DeliveryPolicy(secret=SECRET, allowed_hosts=("127.0.0.1",), deadline_s=5)


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield session_factory(engine)
    engine.dispose()


def enqueue(sessions: sessionmaker[Session], *urls: str) -> list[int]:
    with sessions() as session, session.begin():
        rows = [WebhookDelivery(event="job.ended", url=u, body='{"job":{"id":1}}') for u in urls]
        session.add_all(rows)
        session.flush()
        return [r.id for r in rows]


def delivery(sessions: sessionmaker[Session], delivery_id: int) -> WebhookDelivery:
    with sessions() as session:
        row = session.get_one(WebhookDelivery, delivery_id)
        session.expunge(row)
        return row


def attempts(sessions: sessionmaker[Session], delivery_id: int) -> list[WebhookAttempt]:
    with sessions() as session:
        rows = session.scalars(
            select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery_id)
        ).all()
        session.expunge_all()
        return list(rows)


def wait_for(condition: object, timeout: float = 30) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("http://10.0.0.1/hook", "a private address"),
        ("http://169.254.169.254/latest/meta-data/", "a cloud metadata address"),
        ("http://hooks.loopback.test:9/hook", "a loopback address"),
    ],
)
def test_delivery_refuses_inward_targets_before_opening_a_socket(
    sessions: sessionmaker[Session], fake_network: FakeNetwork, url: str, named: str
) -> None:
    """A row that reached the outbox (the allow-list changed since, or the name
    now resolves inwards) is checked again and given up, never connected."""
    (row_id,) = enqueue(sessions, url)
    report = deliver_due(sessions, POLICY)
    assert report.gave_up == [row_id]
    assert fake_network.connections == []
    (attempt,) = attempts(sessions, row_id)
    assert attempt.status_code is None and attempt.error and named in attempt.error
    assert delivery(sessions, row_id).state is DeliveryState.GAVE_UP


def test_the_connection_goes_to_the_address_checked(
    sessions: sessionmaker[Session], fake_network: FakeNetwork, tmp_path: Path
) -> None:
    """The name resolves to loopback when checked and elsewhere afterwards (a
    rebinding DNS server): the POST goes to the address checked, with the
    name in Host, in the TLS server name, and verified in the certificate."""
    context, ca_file = certificate_for("hooks.pinned.test", tmp_path)
    receiver = Recorder(tls=context).start()
    try:
        fake_network.answer("hooks.pinned.test", ["127.0.0.1"], ["10.0.0.1"])
        policy = dataclasses.replace(POLICY, allowed_hosts=("hooks.pinned.test",), ca_file=ca_file)
        (row_id,) = enqueue(sessions, receiver.url("hooks.pinned.test"))
        assert deliver_due(sessions, policy).delivered == [row_id]
        assert fake_network.lookups == ["hooks.pinned.test"]
        assert [c[0] for c in fake_network.connections] == ["127.0.0.1"]
        (received,) = receiver.received
        assert received.headers["Host"] == f"hooks.pinned.test:{receiver.port}"
        assert receiver.server_names == ["hooks.pinned.test"]
    finally:
        receiver.stop()


def test_a_certificate_for_another_name_is_refused(
    sessions: sessionmaker[Session], fake_network: FakeNetwork, tmp_path: Path
) -> None:
    context, ca_file = certificate_for("someone.else.test", tmp_path)
    receiver = Recorder(tls=context).start()
    try:
        policy = dataclasses.replace(
            POLICY, allowed_hosts=("hooks.loopback.test",), ca_file=ca_file, max_attempts=1
        )
        (row_id,) = enqueue(sessions, receiver.url("hooks.loopback.test"))
        assert deliver_due(sessions, policy).gave_up == [row_id]
        assert receiver.received == []
        (attempt,) = attempts(sessions, row_id)
        assert attempt.error and "certificate" in attempt.error.lower()
    finally:
        receiver.stop()


def test_a_slow_receiver_does_not_hold_up_another(
    sessions: sessionmaker[Session], fake_network: FakeNetwork
) -> None:
    """Three deliveries to a receiver that never answers are due before one to
    a receiver that does: the fast one arrives while the slow one is still
    held, the slow one gets no more than its per-destination share, and its
    attempts end at the deadline."""
    silent = Silent()
    fast = Recorder().start()
    stop = threading.Event()
    policy = dataclasses.replace(POLICY, per_destination=2, deadline_s=5, max_attempts=1)
    try:
        slow_ids = enqueue(sessions, *[silent.url()] * 3)
        (fast_id,) = enqueue(sessions, fast.url())
        runner = threading.Thread(target=run_deliveries, args=(sessions, policy, stop))
        runner.start()
        assert fast.arrived.wait(timeout=policy.deadline_s * 4)
        # The fast delivery arrived while the slow ones are still held: none
        # of them has ended (their deadline is 5 s away), and the silent
        # receiver holds its share of two (the second may be accepted just
        # after the fast one arrived: the deliveries start together).
        assert all(attempts(sessions, i) == [] for i in slow_ids)
        wait_for(lambda: silent.open == 2, policy.deadline_s / 2)
        wait_for(lambda: delivery(sessions, fast_id).state is DeliveryState.DELIVERED)
        assert all(attempts(sessions, i) == [] for i in slow_ids)
        # Then the deadline ends the slow ones, and the third gets its turn.
        wait_for(lambda: all(len(attempts(sessions, i)) == 1 for i in slow_ids), 60)
        for row_id in slow_ids:
            (attempt,) = attempts(sessions, row_id)
            assert attempt.status_code is None
            assert attempt.error and "deadline" in attempt.error
            assert attempt.duration_ms >= policy.deadline_s * 1000
        assert silent.peak == 2 and silent.accepted == 3
        assert len(fast.received) == 1
    finally:
        stop.set()
        silent.stop()
        fast.stop()
    runner.join(timeout=policy.deadline_s * 3)
    assert not runner.is_alive()


def test_an_answer_longer_than_the_cap_is_not_read_whole(
    sessions: sessionmaker[Session], fake_network: FakeNetwork
) -> None:
    size = 256 << 20
    endless = Endless(size)
    try:
        policy = dataclasses.replace(POLICY, max_response_bytes=64 << 10)
        (row_id,) = enqueue(sessions, endless.url())
        assert deliver_due(sessions, policy).delivered == [row_id]
        assert endless.broken.wait(timeout=10)
        assert endless.sent < size // 4
        (attempt,) = attempts(sessions, row_id)
        assert attempt.status_code == 200
    finally:
        endless.stop()
