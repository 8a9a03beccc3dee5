"""A runner whose lease is taken over stops its operation: the PACS sees a
C-CANCEL and the old runner writes nothing more; the new owner runs the job."""

from __future__ import annotations

import threading
import time

from sqlalchemy import select

from qrfarm.dicom import Level
from qrfarm.jobs.leases import claim
from qrfarm.jobs.runner import run_job
from qrfarm.models import Attempt, Job, JobState
from qrfarm.sandbox.synthetic import Corpus

from .conftest import ago
from .test_runner import Bench, bench, moves_into_scp  # noqa: F401 (the fixture)


def test_a_runner_whose_lease_is_taken_over_cancels_its_move(bench: Bench, corpus: Corpus) -> None:  # noqa: F811
    bench.register(max_associations=1)
    study, instances = next((s, i) for s, i in corpus.studies().items() if 10 <= len(i) <= 20)
    # Long enough that the move would still run for many seconds after the take-over.
    bench.pacs.behaviour.retrieve_delay_s = 30.0 / len(instances)
    stats = bench.pacs.behaviour.stats
    with moves_into_scp(bench):
        job_id = bench.client.move("pacs", Level.STUDY, {"StudyInstanceUID": study})
        runner = threading.Thread(target=run_job, args=(bench.deps, job_id, "old-owner"))
        runner.start()
        deadline = time.monotonic() + 30
        while bench.client.status(job_id)["recorded"] < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert bench.client.status(job_id)["recorded"] >= 2, "the move did not start"
        # The old owner's heartbeats stopped reaching the database (a network
        # split, a stalled process) and its lease ran out: another worker took over.
        with bench.client.sessions() as session, session.begin():
            session.get_one(Job, job_id).lease_expires_at = ago(1)
        with bench.client.sessions() as session, session.begin():
            taken = claim(session, job_id, "new-owner", bench.deps.policy)
        assert taken is not None
        runner.join(timeout=90)
        assert not runner.is_alive()
        recorded = bench.client.status(job_id)["recorded"]
    assert stats.cancels == 1  # C-CANCEL seen at the PACS
    assert recorded < len(instances)
    with bench.client.sessions() as session:
        job = session.get_one(Job, job_id)
        assert (job.state, job.lease_owner) == (JobState.RUNNING, "new-owner")
        outcomes = session.execute(
            select(Attempt.worker, Attempt.outcome).where(Attempt.job_id == job_id)
        ).all()
    # The old runner's attempt ended "lost" by the take-over, and it wrote nothing since.
    assert sorted(outcomes) == [("new-owner", None), ("old-owner", "lost")]
