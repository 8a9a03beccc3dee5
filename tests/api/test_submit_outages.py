"""Submitting while the broker, or the database too, is down: the answer says
what was recorded, so a caller that retries never makes a second job.

Each test stops only its own Redis and its own PostgreSQL, never the machine's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from qrfarm.jobs.nodes import NodeSpec
from qrfarm.sandbox.synthetic import Corpus
from tests.farm.conftest import Farm, make_farm, sandbox
from tests.postgres_cluster import run_own_postgres
from tests.redis_server import run_own_redis

from .conftest import start_api

FIND = {"kind": "find", "node": "sandbox", "level": "STUDY", "keys": {"PatientID": "P001"}}


def cli(farm: Farm, *args: str) -> subprocess.CompletedProcess[str]:
    """The qrfarm command as a user runs it, with the farm's settings."""
    return subprocess.run(
        [sys.executable, "-m", "qrfarm.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **farm.env, "COLUMNS": "200"},
        check=False,
    )


def job_id_in(output: str) -> int:
    words = output.split()
    return int(words[words.index("job") + 1])


def test_a_submit_while_redis_is_down_answers_201_and_the_job_runs_once_redis_is_back(
    tmp_path: Path, qrfarm_scp_port: int, corpus: Corpus
) -> None:
    with (
        run_own_redis(tmp_path / "redis") as broker,
        make_farm("redis-postgresql", tmp_path / "farm", qrfarm_scp_port, broker.url) as farm,
        sandbox(corpus, qrfarm_scp_port) as pacs,
    ):
        farm.register(NodeSpec("sandbox", "SANDBOX", "127.0.0.1", pacs.port))  # type: ignore[attr-defined]
        api = start_api(farm)
        farm.start("scheduler", "scheduler")
        farm.start_worker("sandbox")
        http = api.http()

        broker.stop()
        answer = http.post("/jobs", json=FIND, headers={"Idempotency-Key": "outage-1"})
        assert answer.status_code == 201, answer.text
        job: dict[str, Any] = answer.json()
        assert job["state"] == "queued"
        assert job["dispatch_pending"] is True
        assert "broker" in job["note"]
        # The caller's retry is given the same job, not a second one.
        again = http.post("/jobs", json=FIND, headers={"Idempotency-Key": "outage-1"})
        assert again.status_code == 200, again.text
        assert again.json()["id"] == job["id"]
        assert http.get("/jobs", params={"reference": "outage-1"}).json()["total"] == 1
        # The command line says the same, and exits 0: its job exists too.
        run = cli(farm, "find", "sandbox", "--level", "STUDY", "-k", "PatientID=P002")
        assert run.returncode == 0, run.stdout + run.stderr
        assert "dispatch pending" in run.stdout + run.stderr
        assert "Traceback" not in run.stdout + run.stderr
        from_cli = job_id_in(run.stdout)
        assert http.get(f"/jobs/{from_cli}").json()["dispatch_pending"] is True

        broker.start()
        for job_id in (job["id"], from_cli):
            summary = farm.wait(job_id, timeout=120)
            assert summary["state"] == "completed", summary
        assert http.get(f"/jobs/{job['id']}").json()["dispatch_pending"] is False
        api_log = "\n".join(p.read_text() for p in farm.root.glob("api-*.log"))
        assert "Traceback" not in api_log


def test_a_submit_while_the_database_is_down_too_answers_503_and_makes_no_job(
    tmp_path: Path, qrfarm_scp_port: int, corpus: Corpus
) -> None:
    with (
        run_own_redis(tmp_path / "redis") as broker,
        run_own_postgres(tmp_path / "postgres") as database,
        make_farm(
            "redis-postgresql", tmp_path / "farm", qrfarm_scp_port, broker.url, database.url
        ) as farm,
        sandbox(corpus, qrfarm_scp_port) as pacs,
    ):
        farm.register(NodeSpec("sandbox", "SANDBOX", "127.0.0.1", pacs.port))  # type: ignore[attr-defined]
        api = start_api(farm)
        http = api.http()

        broker.stop()
        database.stop()
        answer = http.post("/jobs", json=FIND, headers={"Idempotency-Key": "outage-2"})
        assert answer.status_code == 503, answer.text
        assert "database" in answer.json()["detail"]
        run = cli(farm, "find", "sandbox", "--level", "STUDY", "-k", "PatientID=P002")
        assert run.returncode == 3, run.stdout + run.stderr
        assert "database" in run.stderr
        assert "Traceback" not in run.stdout + run.stderr

        database.start()
        jobs = http.get("/jobs")
        assert jobs.status_code == 200, jobs.text
        assert jobs.json()["total"] == 0
