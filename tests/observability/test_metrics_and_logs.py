"""Metrics and logs of real farm processes after a move from Orthanc: the storage
SCP's and the worker's own metrics, the farm's from the API, and JSON log lines
that name the job, the node and the task."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest

from qrfarm.dicom import Level
from qrfarm.jobs.nodes import NodeSpec
from qrfarm.sandbox.synthetic import Corpus
from tests.api.conftest import start_api
from tests.farm.conftest import Farm, make_farm
from tests.peers.orthanc import OrthancPeer
from tests.peers.ports import free_port, wait_for_port


def scrape(port: int) -> dict[str, float]:
    """name{labels} -> value, for every sample of a Prometheus text page."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False, timeout=10).text
    samples = {}
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) (\S+)", line)
        if match and not line.startswith("#"):
            samples[match[1]] = float(match[2])
    return samples


@pytest.fixture
def farm(tmp_path: Path, qrfarm_scp_port: int):  # type: ignore[no-untyped-def]
    with make_farm("redis-postgresql", tmp_path, qrfarm_scp_port) as farm:
        yield farm


def test_a_scrape_after_a_move_shows_the_right_counts_and_logs_name_the_job(
    farm: Farm, orthanc: OrthancPeer, corpus: Corpus
) -> None:
    farm.register(NodeSpec("orthanc", orthanc.ae_title, "127.0.0.1", orthanc.port))
    scp_metrics, worker_metrics = free_port(), free_port()
    scp = farm.start("scp", "scp", env={"QRFARM_METRICS_PORT": str(scp_metrics)})
    assert wait_for_port(int(farm.env["QRFARM_SCP_PORT"]), still_running=lambda: scp.poll() is None)
    farm.start("scheduler", "scheduler")
    worker = farm.start(
        "worker",
        "worker",
        "--node",
        "orthanc",
        env={"QRFARM_METRICS_PORT": str(worker_metrics), "QRFARM_LOG_FORMAT": "json"},
    )
    assert wait_for_port(worker_metrics, still_running=lambda: worker.poll() is None)
    api = start_api(farm)

    study = corpus.large_study_uid
    instances = corpus.studies()[study]
    job_id = farm.client.move("orthanc", Level.STUDY, {"StudyInstanceUID": study})
    summary = farm.wait(job_id)
    assert summary["state"] == "completed", summary
    count = float(len(instances))
    size = float(sum(i.path.stat().st_size for i in instances))

    scp_samples = scrape(scp_metrics)
    assert scp_samples['qrfarm_scp_stores_total{outcome="stored"}'] == count
    assert scp_samples["qrfarm_scp_store_seconds_count"] == count
    # The data set as received, without the file meta a file on disk adds.
    assert 0.9 * size < scp_samples["qrfarm_scp_received_bytes_total"] <= size
    assert scp_samples['qrfarm_scp_associations_total{result="accepted"}'] >= 1

    worker_samples = scrape(worker_metrics)
    node = f"{orthanc.ae_title}@127.0.0.1:{orthanc.port}"
    assert worker_samples[f'qrfarm_node_associations_total{{event="opened",node="{node}"}}'] >= 1
    assert worker_samples['qrfarm_reconciliations_total{outcome="completed"}'] == 1
    assert worker_samples['qrfarm_job_attempts_run_total{outcome="success"}'] == 1

    with api.http() as http:
        text = http.get("/metrics").text
    assert 'qrfarm_jobs{kind="move",state="completed"} 1.0' in text
    assert f"qrfarm_received_instances_total {count}" in text
    assert 'qrfarm_queue_depth{queue="qrfarm.node.orthanc"} 0.0' in text

    # The worker's log: JSON lines, those about the job carry its id and node.
    deadline = time.monotonic() + 10
    about_job: list[dict[str, object]] = []
    while not about_job and time.monotonic() < deadline:
        lines = [
            json.loads(line)
            for log in farm.root.glob("worker-*.log")
            for line in log.read_text().splitlines()
            if line.startswith("{")
        ]
        about_job = [line for line in lines if line.get("job_id") == job_id]
        time.sleep(0.2)
    assert about_job, farm.logs()
    assert {line["node"] for line in about_job} == {node}
    assert all(line["task_id"] for line in about_job)
    assert any("completed" in str(line["message"]) for line in about_job)
