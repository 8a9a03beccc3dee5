"""The runner in this process, against a sandbox PACS and qrfarm's own SCP:
a node whose permits are all held, and where a move's expected instances
are found."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from qrfarm.client import Client
from qrfarm.config import Settings
from qrfarm.dicom import Level, Node, Timeouts
from qrfarm.jobs.dispatch import RUN_JOB, node_queue
from qrfarm.jobs.nodes import NodeSpec, upsert_node
from qrfarm.jobs.runner import RunnerDeps, run_job
from qrfarm.models import Job, JobState, OrphanInstance, ReceivedInstance, make_engine, upgrade
from qrfarm.sandbox.pacs import Behaviour, SandboxPacs
from qrfarm.sandbox.synthetic import Corpus
from qrfarm.scp import StorageScp
from qrfarm.storage import InstanceStorage
from qrfarm.workers.permits import FilePermits
from qrfarm.workers.pool import AssociationPool
from qrfarm.workers.process import runner_deps
from tests.conftest import QRFARM_SCP_AE

from .conftest import Sent


@dataclass
class Bench:
    """A sandbox PACS, a client and a runner's dependencies on one SQLite database."""

    pacs: SandboxPacs
    port: int
    settings: Settings
    client: Client
    pool: AssociationPool
    deps: RunnerDeps
    resent: Sent

    def register(self, max_associations: int) -> None:
        with self.client.sessions() as session, session.begin():
            upsert_node(
                session,
                NodeSpec(
                    "pacs", "SANDBOX", "127.0.0.1", self.port, max_associations=max_associations
                ),
            )


@pytest.fixture
def bench(tmp_path: Path, corpus: Corpus, qrfarm_scp_port: int) -> Iterator[Bench]:
    pacs = SandboxPacs(
        [i.path for i in corpus.instances],
        behaviour=Behaviour(),
        destinations={QRFARM_SCP_AE: ("127.0.0.1", qrfarm_scp_port)},
    )
    port = pacs.start()
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'q.db'}",
        storage_root=tmp_path / "storage",
        data_dir=tmp_path / "data",
        scp_ae_title=QRFARM_SCP_AE,
        scp_port=qrfarm_scp_port,
        allowed_hosts=["127.0.0.1"],
        reconcile_grace_s=5,
    )
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    client = Client(settings, engine, Sent())
    pool = AssociationPool(FilePermits(settings.data_dir / "permits"), "QRFARM", Timeouts())
    resent = Sent()
    deps = runner_deps(settings, client.sessions, pool, resent)
    try:
        yield Bench(pacs, port, settings, client, pool, deps, resent)
    finally:
        pool.close()
        pacs.stop()
        engine.dispose()


@contextmanager
def moves_into_scp(bench: Bench) -> Iterator[None]:
    """qrfarm's storage SCP, in this process, as the move destination."""
    scp = StorageScp(
        bench.client.sessions,
        InstanceStorage(bench.settings.storage_root),
        ae_title=QRFARM_SCP_AE,
        port=bench.settings.scp_port,
    )
    scp.start()
    try:
        yield
    finally:
        scp.stop(drain_timeout=10)


def move_a_study(bench: Bench, corpus: Corpus) -> tuple[dict[str, Any], int]:
    """Run a move of a study of 10-20 instances; the job's status and the study's size."""
    study, instances = next((s, i) for s, i in corpus.studies().items() if 10 <= len(i) <= 20)
    with moves_into_scp(bench):
        job_id = bench.client.move("pacs", Level.STUDY, {"StudyInstanceUID": study})
        run_job(bench.deps, job_id, "runner-test")
    return bench.client.status(job_id), len(instances)


def test_a_job_whose_node_is_busy_goes_back_to_its_queue_at_once(bench: Bench) -> None:
    bench.register(max_associations=1)
    # Another worker process holds the node's only permit, in use.
    other = AssociationPool(FilePermits(bench.settings.data_dir / "permits"), "OTHER", Timeouts())
    try:
        job_id = bench.client.find("pacs", Level.STUDY, {"PatientID": "*"})
        with other.query_retrieve(Node("SANDBOX", "127.0.0.1", bench.port, max_associations=1)):
            run_job(bench.deps, job_id, "runner-test")
    finally:
        other.close()
    status = bench.client.status(job_id, responses=True)
    assert status["state"] == "queued"
    assert status["attempt_count"] == 0  # waiting for a permit is not an attempt
    assert [a["outcome"] for a in status["attempts"]] == ["node busy"]
    assert bench.resent.messages == [(RUN_JOB, [job_id], node_queue("pacs"))]
    # Its next run, with the permit free, is an attempt like any other.
    run_job(bench.deps, job_id, "runner-test")
    status = bench.client.status(job_id)
    assert status["state"] == "completed"
    assert status["attempt_count"] == 1


@pytest.mark.parametrize(
    ("max_associations", "associations_seen"),
    [(1, 1), (2, 2)],
    ids=["one-association-find-first", "spare-association-alongside"],
)
def test_a_move_knows_its_expected_instances_however_many_associations_it_may_have(
    bench: Bench, corpus: Corpus, max_associations: int, associations_seen: int
) -> None:
    """With a permit to spare, the IMAGE-level find runs on a second association
    while the move runs; with one association, before the move on it."""
    bench.register(max_associations=max_associations)
    status, count = move_a_study(bench, corpus)
    assert status["state"] == "completed", status
    assert status["expected"] == status["recorded"] == count
    assert bench.pacs.behaviour.stats.peak_associations == associations_seen


@pytest.mark.parametrize("max_associations", [1, 2], ids=["before-the-move", "alongside"])
def test_a_pacs_that_refuses_image_level_finds_still_moves_reconciled_on_its_counts(
    bench: Bench, corpus: Corpus, max_associations: int
) -> None:
    bench.register(max_associations=max_associations)
    bench.pacs.behaviour.refused_find_levels = frozenset({Level.IMAGE})
    status, count = move_a_study(bench, corpus)
    assert status["state"] == "completed", status
    assert status["expected"] is None  # unknown: the PACS would not say
    assert status["reported"]["completed"] == status["recorded"] == count


def test_a_long_move_writes_its_progress_while_it_runs(bench: Bench, corpus: Corpus) -> None:
    """The pending responses' counts reach the job about once a second."""
    bench.register(max_associations=2)
    bench.pacs.behaviour.retrieve_delay_s = 0.2  # before each sub-operation: about 3 s
    study, instances = next((s, i) for s, i in corpus.studies().items() if 10 <= len(i) <= 20)
    seen: list[tuple[int, int]] = []
    with moves_into_scp(bench):
        job_id = bench.client.move("pacs", Level.STUDY, {"StudyInstanceUID": study})
        runner = threading.Thread(target=run_job, args=(bench.deps, job_id, "runner-test"))
        runner.start()
        while runner.is_alive():
            progress = bench.client.status(job_id)["progress"]
            if progress["remaining"] is not None:
                seen.append((progress["remaining"], progress["completed"]))
            time.sleep(0.25)
        runner.join()
    assert bench.client.status(job_id)["state"] == "completed"
    written = sorted(set(seen), key=lambda p: p[1])
    assert len(written) >= 2, written  # more than once while it ran
    assert [r for r, _ in written] == sorted((r for r, _ in written), reverse=True)
    assert all(remaining + completed <= len(instances) for remaining, completed in written)


def _wait_recorded(bench: Bench, job_id: int, count: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and bench.client.status(job_id)["recorded"] < count:
        time.sleep(0.2)


@pytest.mark.parametrize("retry_partial", [True, False], ids=["retry-pending", "ended-partial"])
def test_stores_after_the_grace_with_no_originator_complete_the_job_with_one_move(
    bench: Bench, corpus: Corpus, retry_partial: bool
) -> None:
    """A PACS that answers the C-MOVE at once and stores later, naming no
    originator: the stores come after the grace, while the job waits for its
    retry or after it ended partial. They are its own, by their UIDs; the job
    ends completed on what is held and the PACS sees no second move."""
    bench.register(max_associations=2)
    bench.deps.policy = replace(
        bench.deps.policy, reconcile_grace_s=0.3, retry_partial=retry_partial
    )
    bench.pacs.behaviour.store_after_answer_s = 2.5
    study, instances = next((s, i) for s, i in corpus.studies().items() if 10 <= len(i) <= 20)
    with moves_into_scp(bench):
        job_id = bench.client.move("pacs", Level.STUDY, {"StudyInstanceUID": study})
        run_job(bench.deps, job_id, "runner-test")
        first = bench.client.status(job_id)
        assert first["recorded"] == 0  # the grace ended before any store came
        assert first["state"] == ("queued" if retry_partial else "partial"), first
        _wait_recorded(bench, job_id, len(instances))
        deadline = time.monotonic() + 20
        while bench.client.status(job_id)["state"] == "queued" and time.monotonic() < deadline:
            run_job(bench.deps, job_id, "runner-test")  # the retry, once due
            time.sleep(0.2)
    status = bench.client.status(job_id)
    assert status["state"] == "completed", status
    assert status["recorded"] == status["expected"] == len(instances)
    assert bench.pacs.behaviour.stats.moves == 1


@pytest.mark.parametrize("kind", ["move", "get"])
def test_a_retry_of_an_instance_never_expected_asks_the_pacs_for_nothing(
    bench: Bench, corpus: Corpus, kind: str
) -> None:
    """A partial job names an instance its find never listed (the PACS said it
    failed): a retry cannot ask for it by UID, and must not ask for the whole
    study instead."""
    bench.register(max_associations=2)
    study, instances = next((s, i) for s, i in corpus.studies().items() if 10 <= len(i) <= 20)
    with moves_into_scp(bench):
        submit = bench.client.move if kind == "move" else bench.client.get
        job_id = submit("pacs", Level.STUDY, {"StudyInstanceUID": study})
        run_job(bench.deps, job_id, "runner-test")
        assert bench.client.status(job_id)["state"] == "completed"
        with bench.client.sessions() as session, session.begin():
            job = session.get_one(Job, job_id)
            job.state, job.reported_failed = JobState.PARTIAL, 1
            job.failed_uids = job.missing_uids = ["1.2.826.0.1.3680043.9.9999"]
        bench.client.retry(job_id)
        run_job(bench.deps, job_id, "runner-test")
    status = bench.client.status(job_id)
    assert status["state"] == "partial", status
    assert status["recorded"] == len(instances)
    assert bench.pacs.behaviour.stats.moves == (1 if kind == "move" else 0)
    assert bench.pacs.behaviour.stats.gets == (1 if kind == "get" else 0)


def test_a_get_counts_only_what_it_asked_for_from_a_pacs_that_sends_more(
    bench: Bench, corpus: Corpus
) -> None:
    """A faulty PACS answers a SERIES-level C-GET with the whole study: the
    instances of the other series are kept as orphans that name the job,
    never counted for it."""
    bench.register(max_associations=2)
    study, instances = next(
        (s, i) for s, i in corpus.studies().items() if len({x.series_uid for x in i}) >= 2
    )
    series = sorted({i.series_uid for i in instances})[0]
    asked = [i for i in instances if i.series_uid == series]
    bench.pacs.behaviour.get_sends_whole_study = True
    job_id = bench.client.get(
        "pacs", Level.SERIES, {"StudyInstanceUID": study, "SeriesInstanceUID": series}
    )
    run_job(bench.deps, job_id, "runner-test")
    status = bench.client.status(job_id)
    assert status["recorded"] == len(asked), status
    with bench.client.sessions() as session:
        counted = set(
            session.scalars(
                select(ReceivedInstance.sop_instance_uid).where(ReceivedInstance.job_id == job_id)
            )
        )
        kept = session.scalars(select(OrphanInstance)).all()
    assert counted == {i.sop_uid for i in asked}
    assert {o.sop_instance_uid for o in kept} == {i.sop_uid for i in instances} - counted
    assert all(o.claimed_job_id == job_id and o.refusal for o in kept)
