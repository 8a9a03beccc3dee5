"""The farm end to end, with real worker, scheduler and SCP processes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from qrfarm.dicom import Level, Root
from qrfarm.jobs.nodes import NodeSpec
from qrfarm.models import MatchedBy
from qrfarm.sandbox.synthetic import Corpus
from tests.peers.dcmqrscp import DcmqrscpPeer
from tests.peers.orthanc import OrthancPeer

from .conftest import Farm, make_farm


@pytest.fixture(params=["redis-postgresql", "embedded"])
def farm(request: pytest.FixtureRequest, tmp_path: Path, qrfarm_scp_port: int):  # type: ignore[no-untyped-def]
    with make_farm(request.param, tmp_path, qrfarm_scp_port) as farm:
        yield farm


@pytest.fixture
def redis_farm(tmp_path: Path, qrfarm_scp_port: int):  # type: ignore[no-untyped-def]
    with make_farm("redis-postgresql", tmp_path, qrfarm_scp_port) as farm:
        yield farm


def register_orthanc(farm: Farm, orthanc: OrthancPeer) -> None:
    farm.register(NodeSpec("orthanc", orthanc.ae_title, "127.0.0.1", orthanc.port))


def test_move_get_and_find_complete_against_orthanc(
    farm: Farm, orthanc: OrthancPeer, corpus: Corpus
) -> None:
    register_orthanc(farm, orthanc)
    farm.start_scp()
    farm.start("scheduler", "scheduler")
    farm.start_worker("orthanc")
    study = corpus.large_study_uid
    instances = {i.sop_uid for i in corpus.studies()[study]}

    move = farm.wait(farm.client.move("orthanc", Level.STUDY, {"StudyInstanceUID": study}))
    assert move["state"] == "completed", move
    assert move["expected"] == move["reported"]["completed"] == move["recorded"] == len(instances)
    rows = farm.rows(move["id"])
    assert {r.sop_instance_uid for r in rows} == instances
    assert {r.matched_by for r in rows} == {MatchedBy.ORIGINATOR}

    series = next(s for s, i in corpus.series().items() if i[0].study_uid == study)
    get = farm.wait(
        farm.client.get(
            "orthanc", Level.SERIES, {"StudyInstanceUID": study, "SeriesInstanceUID": series}
        )
    )
    assert get["state"] == "completed", get
    assert get["recorded"] == get["reported"]["completed"] == len(corpus.series()[series])
    assert {r.matched_by for r in farm.rows(get["id"])} == {MatchedBy.GET}

    find = farm.wait(farm.client.find("orthanc", Level.STUDY, {"PatientID": "P00*"}))
    assert find["state"] == "completed"
    answers = farm.client.results(find["id"])
    assert {a["0020000D"]["Value"][0] for a in answers} == set(corpus.studies())
    # Every response of the move is kept, pending ones included.
    status = farm.client.status(move["id"], responses=True)
    responses = status["attempts"][-1]["responses"]
    assert responses[-1]["status"] == "0x0000"


def test_twenty_jobs_two_workers_two_pacs(
    redis_farm: Farm, orthanc: OrthancPeer, dcmqrscp: DcmqrscpPeer, corpus: Corpus
) -> None:
    farm = redis_farm
    register_orthanc(farm, orthanc)
    farm.register(NodeSpec("dcmqrscp", dcmqrscp.ae_title, "127.0.0.1", dcmqrscp.port))
    farm.start_scp()
    farm.start("scheduler", "scheduler")
    farm.start_worker("orthanc", "dcmqrscp")
    farm.start_worker("orthanc", "dcmqrscp")
    studies = sorted(corpus.studies())
    jobs: dict[int, str] = {}
    for n in range(20):
        node = "orthanc" if n % 2 else "dcmqrscp"
        study = studies[n % len(studies)]
        if n % 4 == 3:
            jobs[farm.client.find(node, Level.SERIES, {"StudyInstanceUID": study})] = ""
        else:
            jobs[farm.client.move(node, Level.STUDY, {"StudyInstanceUID": study})] = study
    for job_id, study in jobs.items():
        summary = farm.wait(job_id, timeout=240)
        assert summary["state"] == "completed", summary
        if study:
            expected = {i.sop_uid for i in corpus.studies()[study]}
            assert {r.sop_instance_uid for r in farm.rows(job_id)} == expected
            assert summary["recorded"] == len(expected)


def test_a_worker_killed_mid_move_loses_nothing_and_counts_nothing_twice(
    redis_farm: Farm, orthanc: OrthancPeer, corpus: Corpus
) -> None:
    farm = redis_farm
    register_orthanc(farm, orthanc)
    farm.start_scp()
    farm.start("scheduler", "scheduler")
    worker = farm.start_worker("orthanc", concurrency=1)
    study = corpus.large_study_uid
    expected = {i.sop_uid for i in corpus.studies()[study]}
    job_id = farm.client.move("orthanc", Level.STUDY, {"StudyInstanceUID": study})
    deadline = time.monotonic() + 60
    while farm.client.status(job_id)["recorded"] < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    farm.kill(worker)  # the worker's main process and its pool children, mid-move
    farm.start_worker("orthanc", concurrency=1)
    summary = farm.wait(job_id, timeout=180)
    assert summary["state"] == "completed", summary
    rows = farm.rows(job_id)
    assert len(rows) == len({r.sop_instance_uid for r in rows}) == len(expected)
    assert {r.sop_instance_uid for r in rows} == expected
    assert summary["recorded"] == len(expected)
    assert summary["attempt_count"] >= 2


def test_scp_stopped_mid_move_ends_partial_and_the_retry_fetches_what_is_missing(
    farm: Farm, orthanc: OrthancPeer, corpus: Corpus
) -> None:
    register_orthanc(farm, orthanc)
    scp = farm.start_scp()
    farm.start("scheduler", "scheduler")
    farm.start_worker("orthanc", concurrency=1)
    study = corpus.large_study_uid
    expected = {i.sop_uid for i in corpus.studies()[study]}
    job_id = farm.client.move("orthanc", Level.STUDY, {"StudyInstanceUID": study})
    deadline = time.monotonic() + 60
    while farm.client.status(job_id)["recorded"] < 30 and time.monotonic() < deadline:
        time.sleep(0.01)
    farm.kill(scp)
    summary = farm.wait(job_id, timeout=120)
    assert summary["state"] == "partial", summary
    arrived = {r.sop_instance_uid for r in farm.rows(job_id)}
    assert set(summary["missing_uids"]) == expected - arrived
    assert summary["missing_uids"]

    farm.start_scp()
    farm.client.retry(job_id)
    summary = farm.wait(job_id, timeout=120)
    assert summary["state"] == "completed", summary
    assert {r.sop_instance_uid for r in farm.rows(job_id)} == expected
    # The retry asked for exactly the missing instances, nothing more: one
    # IMAGE-level move per series, their final counts adding up to the missing.
    # (Read from the attempt's responses: the job ends by content once all it
    # expects is recorded, which can be before its worker has written the
    # last final response's counts into the job's summary.)
    last = farm.client.status(job_id, responses=True)["attempts"][-1]["responses"]
    finals = [r for r in last if r["category"] != "pending"]
    assert sum(r["completed"] for r in finals) == len(expected - arrived)


def test_pacs_not_listening_retries_then_fails_with_the_reason(farm: Farm, tmp_path: Path) -> None:
    from tests.peers.ports import free_port

    farm.register(NodeSpec("gone", "GONE", "127.0.0.1", free_port()))
    farm.start("scheduler", "scheduler")
    farm.start_worker("gone")
    job_id = farm.client.find("gone", Level.STUDY, {"PatientID": "P001"})
    summary = farm.wait(job_id, timeout=120)
    assert summary["state"] == "failed"
    assert "Connection refused" in summary["error"]
    assert summary["attempt_count"] == 3
    attempts = farm.client.status(job_id, responses=True)["attempts"]
    assert all(a["outcome"] == "error" for a in attempts)
    assert not any(s["state"] == "running" for s in [farm.client.status(job_id)])


def test_root_patient_move_is_recorded_like_a_study_root_one(
    farm: Farm, orthanc: OrthancPeer, corpus: Corpus
) -> None:
    register_orthanc(farm, orthanc)
    farm.start_scp()
    farm.start("scheduler", "scheduler")
    farm.start_worker("orthanc", concurrency=1)
    instances = corpus.patients()["P001"]
    job_id = farm.client.move("orthanc", Level.PATIENT, {"PatientID": "P001"}, root=Root.PATIENT)
    summary = farm.wait(job_id)
    assert summary["state"] == "completed", summary
    assert summary["recorded"] == len(instances)
