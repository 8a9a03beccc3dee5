"""The farm under pressure: association limits, a Redis restart, a cancel."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from qrfarm.dicom import Level
from qrfarm.jobs.dispatch import broker_keys, node_queue
from qrfarm.jobs.nodes import NodeSpec
from qrfarm.models import MatchedBy
from qrfarm.sandbox.synthetic import Corpus
from tests.peers.orthanc import OrthancPeer
from tests.redis_server import run_own_redis

from .conftest import make_farm, sandbox


@pytest.mark.parametrize("kind", ["redis-postgresql", "embedded"])
def test_a_node_limited_to_two_associations_never_sees_three(
    tmp_path: Path, qrfarm_scp_port: int, corpus: Corpus, kind: str
) -> None:
    """Three single-process workers share two permits; the one left without
    gives its job back to the queue (sent again by the worker itself)."""
    with (
        make_farm(kind, tmp_path, qrfarm_scp_port) as farm,
        sandbox(corpus, qrfarm_scp_port, find_delay_s=0.15) as pacs,
    ):
        farm.register(
            NodeSpec(
                "slow",
                "SANDBOX",
                "127.0.0.1",
                pacs.port,  # type: ignore[attr-defined]
                max_associations=2,
            )
        )
        farm.start("scheduler", "scheduler")
        for _ in range(3):
            farm.start_worker("slow", concurrency=1)
        jobs = [farm.client.find("slow", Level.STUDY, {}) for _ in range(10)]
        for job_id in jobs:
            summary = farm.wait(job_id, timeout=240)
            assert summary["state"] == "completed", summary
            assert summary["answers"] == len(corpus.studies())
    # The peak is counted at the PACS: exactly the limit, never above.
    assert pacs.behaviour.stats.peak_associations == 2


def test_cancel_of_a_long_move_reaches_the_pacs_and_keeps_what_arrived(
    tmp_path: Path, qrfarm_scp_port: int, corpus: Corpus
) -> None:
    with (
        make_farm("embedded", tmp_path, qrfarm_scp_port) as farm,
        sandbox(corpus, qrfarm_scp_port, retrieve_delay_s=0.05) as pacs,
    ):
        farm.register(NodeSpec("slow", "SANDBOX", "127.0.0.1", pacs.port))  # type: ignore[attr-defined]
        farm.start_scp()
        farm.start("scheduler", "scheduler")
        farm.start_worker("slow", concurrency=1)
        study = corpus.large_study_uid
        total = len(corpus.studies()[study])
        job_id = farm.client.move("slow", Level.STUDY, {"StudyInstanceUID": study})
        deadline = time.monotonic() + 60
        while farm.client.status(job_id)["recorded"] < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        farm.client.cancel(job_id)
        summary = farm.wait(job_id, timeout=120)
        rows = farm.rows(job_id)
    assert summary["state"] == "cancelled", summary
    assert pacs.behaviour.stats.cancels == 1
    assert 10 <= len(rows) < total
    assert summary["recorded"] == len(rows)
    # pynetdicom's Move SCP names itself as originator: matched by UIDs.
    assert {r.matched_by for r in rows} == {MatchedBy.UIDS}


def _queued(url: str, node: str) -> int:
    """Messages in the node's queue, in every priority lane."""
    client = redis.Redis.from_url(url)
    return sum(int(client.llen(key)) for key in broker_keys(node_queue(node)))


def test_a_redis_restart_with_jobs_queued_loses_none(
    tmp_path: Path, qrfarm_scp_port: int, orthanc: OrthancPeer, corpus: Corpus
) -> None:
    with (
        run_own_redis(tmp_path / "redis") as server,
        make_farm(
            "redis-postgresql", tmp_path / "farm", qrfarm_scp_port, broker_url=server.url
        ) as farm,
    ):
        farm.register(NodeSpec("orthanc", orthanc.ae_title, "127.0.0.1", orthanc.port))
        jobs = [
            farm.client.find("orthanc", Level.STUDY, {"PatientID": f"P00{n}"}) for n in range(1, 6)
        ]
        assert _queued(server.url, "orthanc") == len(jobs)
        server.stop()
        server.start()  # empty: it keeps nothing on disk
        assert _queued(server.url, "orthanc") == 0
        farm.start("scheduler", "scheduler")
        farm.start_worker("orthanc")
        for job_id in jobs:
            summary = farm.wait(job_id, timeout=120)
            assert summary["state"] == "completed", summary
