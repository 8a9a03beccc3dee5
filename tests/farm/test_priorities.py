"""Priority reaches the broker: an urgent job submitted behind 1,000 queued bulk
jobs for the same node starts next, on a real worker over real Redis."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.dicom import Level
from qrfarm.jobs.nodes import NodeSpec
from qrfarm.jobs.priority import BULK, URGENT
from qrfarm.jobs.submit import JobRequest, SubmitRules
from qrfarm.jobs.submit_many import submit_many
from qrfarm.models import Attempt, Job, JobKind, JobState
from qrfarm.sandbox.synthetic import Corpus

from .conftest import make_farm, sandbox

BULK_JOBS = 1000


def _started(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Attempt)) or 0)


def test_an_urgent_job_behind_a_thousand_bulk_jobs_starts_next(
    tmp_path: Path, qrfarm_scp_port: int, corpus: Corpus
) -> None:
    with (
        sandbox(corpus, qrfarm_scp_port, find_delay_s=0.05) as pacs,
        make_farm("redis-postgresql", tmp_path, qrfarm_scp_port) as farm,
    ):
        farm.register(NodeSpec("pacs", "SANDBOX", "127.0.0.1", pacs.port))  # type: ignore[attr-defined]
        client = farm.client
        find = JobRequest(JobKind.FIND, "pacs", Level.STUDY, keys={"PatientID": "*"})
        bulk = submit_many(
            client.sessions,
            [replace(find, priority=BULK)] * BULK_JOBS,
            client.dispatcher,
            SubmitRules.from_settings(client.settings),
        )
        assert len(bulk) == BULK_JOBS
        # The worker is busy with bulk work when the urgent job comes.
        worker = farm.start_worker("pacs", concurrency=1)
        deadline = time.monotonic() + 60
        while _started(client.sessions) < 3:
            assert worker.poll() is None and time.monotonic() < deadline, farm.logs()
            time.sleep(0.05)
        before = _started(client.sessions)
        urgent = client.find("pacs", Level.STUDY, {"PatientID": "*"}, priority=URGENT)
        summary = farm.wait(urgent, timeout=60)
        assert summary["state"] == "completed", summary
        with client.sessions() as session:
            urgent_start = session.scalar(
                select(Attempt.started_at).where(Attempt.job_id == urgent)
            )
            started_first = session.scalar(
                select(func.count())
                .select_from(Attempt)
                .where(Attempt.job_id.in_(bulk), Attempt.started_at < urgent_start)
            )
            still_queued = session.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.id.in_(bulk), Job.state == JobState.QUEUED)
            )
        # Between its submission and its start, at most the bulk job running
        # and the one message the worker had already taken (prefetch 1).
        assert started_first is not None and started_first - before <= 2, (before, started_first)
        assert still_queued is not None and still_queued > BULK_JOBS - 50
