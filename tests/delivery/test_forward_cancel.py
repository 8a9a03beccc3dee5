"""Cancelling a forward while it sends: the sending stops, the job ends cancelled.

A slow destination (a sandbox answering each C-STORE after a pause) takes
the farm's copy of the large study; the forward is cancelled once the first
instances arrived there."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qrfarm.dicom import Level
from qrfarm.jobs.nodes import NodeSpec
from qrfarm.sandbox.destination import SandboxDestination
from qrfarm.sandbox.synthetic import Corpus
from tests.farm.conftest import Farm, make_farm
from tests.peers.orthanc import OrthancPeer

STORE_DELAY_S = 0.05


@pytest.fixture(scope="module")
def slow_destination(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[SandboxDestination, int]]:
    destination = SandboxDestination(
        Path(tmp_path_factory.mktemp("slow")), ae_title="SLOWDEST", store_delay_s=STORE_DELAY_S
    )
    port = destination.start()
    try:
        yield destination, port
    finally:
        destination.stop()


@pytest.fixture(scope="module")
def farm(
    tmp_path_factory: pytest.TempPathFactory,
    qrfarm_scp_port: int,
    orthanc: OrthancPeer,
    slow_destination: tuple[SandboxDestination, int],
) -> Iterator[Farm]:
    destination, port = slow_destination
    with make_farm("embedded", tmp_path_factory.mktemp("farm"), qrfarm_scp_port) as farm:
        farm.register(NodeSpec("orthanc", orthanc.ae_title, "127.0.0.1", orthanc.port))
        farm.register(
            NodeSpec(
                "slow",
                destination.ae_title,
                "127.0.0.1",
                port,
                max_associations=1,
            )
        )
        farm.start_scp()
        farm.start("scheduler", "scheduler")
        farm.start_worker("orthanc", "slow", concurrency=2)
        yield farm


def test_a_forward_cancelled_while_it_sends_stops_sending_and_ends_cancelled(
    farm: Farm, slow_destination: tuple[SandboxDestination, int], corpus: Corpus
) -> None:
    destination, _ = slow_destination
    study = corpus.large_study_uid
    total = len(corpus.studies()[study])
    move = farm.wait(farm.client.move("orthanc", Level.STUDY, {"StudyInstanceUID": study}))
    assert move["state"] == "completed", move
    forward_id = farm.client.forward(int(move["id"]), "slow")
    deadline = time.monotonic() + 60
    while sum(destination.stores.values()) < 5:
        assert time.monotonic() < deadline, farm.logs()
        time.sleep(0.05)
    farm.client.cancel(forward_id)
    cancelled_at = time.monotonic()
    ended = farm.wait(forward_id, timeout=60)
    assert ended["state"] == "cancelled", ended
    stored = sum(destination.stores.values())
    # Sending all would take total x STORE_DELAY_S; it stopped within a few
    # seconds of the cancel (the worker sees it at its next lease renewal).
    assert stored < total, (stored, total)
    assert time.monotonic() - cancelled_at < total * STORE_DELAY_S
