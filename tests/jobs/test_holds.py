"""Priorities and holds: the sweeper keeps a job's lane; a bulk window, a
not_before and a node's cap hold a job, and say why, until it may start."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.config import Settings, broker_config
from qrfarm.dicom import Level, Timeouts
from qrfarm.jobs.dispatch import broker_keys, priority_transport_options
from qrfarm.jobs.leases import claim
from qrfarm.jobs.nodes import NodeSpec, upsert_node
from qrfarm.jobs.policy import JobPolicy
from qrfarm.jobs.priority import BULK, URGENT, broker_priority
from qrfarm.jobs.runner import run_job
from qrfarm.jobs.submit import JobRequest, SubmitRules, submit
from qrfarm.jobs.sweeper import sweep
from qrfarm.models import Job, JobKind, JobState, NodeRecord, make_engine, session_factory, upgrade
from qrfarm.sandbox.pacs import Behaviour, SandboxPacs
from qrfarm.sandbox.synthetic import Corpus
from qrfarm.workers.permits import FilePermits
from qrfarm.workers.pool import AssociationPool
from qrfarm.workers.process import runner_deps
from tests.conftest import QRFARM_SCP_AE

from .conftest import Sent, add_job, load

POLICY = JobPolicy(redispatch_after_s=120)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: str) -> None:
        self.now = dt.datetime.fromisoformat(now)

    def __call__(self) -> dt.datetime:
        return self.now


def test_priority_lanes_put_urgent_first_and_bulk_last() -> None:
    assert broker_priority(URGENT) == 0 < broker_priority(1) < broker_priority(0)
    assert broker_priority(0) < broker_priority(BULK) == broker_priority(-100)


def test_the_sweeper_sends_each_job_in_its_own_lane(sessions: sessionmaker[Session]) -> None:
    bulk = add_job(sessions, priority=BULK)
    urgent = add_job(sessions, priority=90)
    sent = Sent()
    assert sorted(sweep(sessions, sent, POLICY).dispatched) == sorted([bulk, urgent])
    pairs = zip(sent.messages, sent.priorities, strict=True)
    by_job = {args[0]: priority for (_, args, _), priority in pairs}
    assert by_job == {urgent: 90, bulk: BULK}


def test_a_node_cap_holds_the_next_retrieve_and_says_until_when(
    sessions: sessionmaker[Session],
) -> None:
    first, second, find = (
        add_job(sessions),
        add_job(sessions),
        add_job(sessions, kind=JobKind.FIND),
    )
    with sessions() as session, session.begin():
        session.scalars(select(NodeRecord)).one().retrieves_per_minute = 1
    with sessions() as session, session.begin():
        assert claim(session, first, "w1", POLICY) is not None
    with sessions() as session, session.begin():
        assert claim(session, second, "w2", POLICY) is None
        # A find is no retrieve: the cap does not hold it.
        assert claim(session, find, "w3", POLICY) is not None
    held = load(sessions, second)
    assert held.state is JobState.QUEUED
    assert held.wait_reason is not None and "at most 1 retrieve(s) a minute" in held.wait_reason
    started = load(sessions, first).started_at
    assert started is not None and held.next_attempt_at is not None
    assert dt.timedelta(seconds=59) < held.next_attempt_at - started <= dt.timedelta(seconds=60)


def test_not_before_holds_a_job_until_then(sessions: sessionmaker[Session]) -> None:
    clock = Clock("2026-12-09T10:00:00")
    job_id = add_job(sessions, not_before=dt.datetime.fromisoformat("2026-12-09T10:05:00"))
    policy = replace(POLICY, clock=clock)
    with sessions() as session, session.begin():
        assert claim(session, job_id, "w", policy) is None
    job = load(sessions, job_id)
    assert job.wait_reason == "not before 2026-12-09T10:05:00Z (the job's not_before)"
    assert job.next_attempt_at == dt.datetime.fromisoformat("2026-12-09T10:05:00")
    clock.now = dt.datetime.fromisoformat("2026-12-09T10:05:00")
    assert sweep(sessions, Sent(), policy).dispatched == [job_id]
    with sessions() as session, session.begin():
        assert claim(session, job_id, "w", policy) is not None
    assert load(sessions, job_id).wait_reason is None


@pytest.fixture
def sandbox_sessions(
    tmp_path: Path, corpus: Corpus, qrfarm_scp_port: int
) -> Iterator[tuple[Settings, sessionmaker[Session], int]]:
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
    )
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        yield settings, session_factory(engine), port
    finally:
        pacs.stop()
        engine.dispose()


def test_a_bulk_job_held_by_its_window_starts_when_the_window_opens(
    sandbox_sessions: tuple[Settings, sessionmaker[Session], int],
) -> None:
    settings, sessions, port = sandbox_sessions
    with sessions() as session, session.begin():
        upsert_node(session, NodeSpec("pacs", "SANDBOX", "127.0.0.1", port))
        node = session.scalars(select(NodeRecord)).one()
        node.bulk_windows = ["mon-fri 19:00-07:00", "sat,sun"]
        node.timezone = "Europe/Zurich"
    # Wednesday 18:59 in Zurich (UTC+1).
    clock = Clock("2026-12-09T17:59:00")
    rules = replace(SubmitRules.from_settings(settings), clock=clock)
    sent = Sent()
    find = JobRequest(JobKind.FIND, "pacs", Level.STUDY, keys={"PatientID": "*"})
    bulk = submit(sessions, replace(find, priority=BULK), sent, rules)
    urgent = submit(sessions, replace(find, priority=URGENT), sent, rules)
    # Urgent work is never held; the bulk job is recorded and not sent.
    assert [args for _, args, _ in sent.messages] == [[urgent]]
    job = load(sessions, bulk)
    assert job.state is JobState.QUEUED
    assert job.wait_reason is not None
    assert "waits for a window of node pacs" in job.wait_reason
    assert "the next opens at 2026-12-09T18:00:00Z" in job.wait_reason
    pool = AssociationPool(FilePermits(settings.data_dir / "permits"), "QRFARM", Timeouts())
    try:
        deps = runner_deps(settings, sessions, pool, Sent())
        deps = replace(deps, policy=replace(deps.policy, clock=clock))
        # A message that reaches a worker early (sent twice, say) is held again.
        run_job(deps, bulk, "w")
        assert load(sessions, bulk).state is JobState.QUEUED
        # (The urgent job, stamped sent by the real clock days before this
        # one, counts as lost to the sweeper and is sent again: harmless.)
        clock.now = dt.datetime.fromisoformat("2026-12-09T17:59:59")
        assert bulk not in sweep(sessions, sent, deps.policy).dispatched
        clock.now = dt.datetime.fromisoformat("2026-12-09T18:00:00")  # 19:00 in Zurich
        assert sweep(sessions, sent, deps.policy).dispatched == [bulk]
        assert sent.priorities[-1] == BULK
        run_job(deps, bulk, "w")
    finally:
        pool.close()
    with sessions() as session:
        ended = session.get_one(Job, bulk)
        assert ended.state is JobState.COMPLETED, ended.error
        assert ended.wait_reason is None
        assert ended.attempt_count == 1


def test_producers_and_workers_use_the_lanes_that_broker_keys_names() -> None:
    _, options = broker_config(
        Settings(broker_url="redis://127.0.0.1:6379/0", allowed_hosts=["127.0.0.1"])
    )
    assert {k: options[k] for k in ("priority_steps", "sep")} == priority_transport_options()
    assert broker_keys("q") == ["q", "q\x06\x163", "q\x06\x166", "q\x06\x169"]
