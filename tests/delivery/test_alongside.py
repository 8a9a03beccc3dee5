"""A move to a destination confirms what arrived while the move still runs
(by C-FIND, or by Storage Commitment for what a find showed arrived): by its
final response most instances are confirmed, and the verification after it
asks only for the rest."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from qrfarm.client import Client
from qrfarm.config import Settings
from qrfarm.delivery.commitment import requests_of
from qrfarm.dicom import Level, Timeouts
from qrfarm.jobs import profiles
from qrfarm.jobs.nodes import NodeSpec, upsert_node
from qrfarm.jobs.runner import run_job
from qrfarm.models import (
    Attempt,
    DeliveredInstance,
    NodeRecord,
    make_engine,
    upgrade,
)
from qrfarm.sandbox.destination import SandboxDestination
from qrfarm.sandbox.pacs import Behaviour, SandboxPacs
from qrfarm.sandbox.synthetic import Corpus
from qrfarm.scp import StorageScp
from qrfarm.storage import InstanceStorage
from qrfarm.workers.permits import FilePermits
from qrfarm.workers.pool import AssociationPool
from qrfarm.workers.process import runner_deps
from tests.conftest import QRFARM_SCP_AE
from tests.jobs.conftest import Sent
from tests.peers import require_peer
from tests.peers.orthanc import ORTHANC_BINARIES, OrthancPeer

# Each C-STORE of the move waits this long at the source: a move of 6-20
# instances then runs for a second or more, several rounds of finds.
STORE_DELAY_S = 0.12


@dataclass
class Farm:
    client: Client
    settings: Settings
    pool: AssociationPool
    source: SandboxPacs
    held: Callable[[], set[str]]  # what the destination holds


@pytest.fixture
def farm(tmp_path: Path, corpus: Corpus, qrfarm_scp_port: int) -> Iterator[Farm]:
    """A sandbox destination (no Storage Commitment; learned so) that takes
    STORE_DELAY_S to answer each C-STORE, and the farm's own SCP."""
    destination = SandboxDestination(
        tmp_path / "dest", ae_title="READING", store_delay_s=STORE_DELAY_S
    )
    dest_port = destination.start()
    try:
        with (
            _farm(tmp_path, corpus, dest_port, lambda: destination.held, qrfarm_scp_port) as farm,
            _scp(farm, qrfarm_scp_port),
        ):
            with farm.client.sessions() as session, session.begin():
                profiles.observe(session, _reading(session), profiles.SUPPORTS_COMMITMENT, False)
            yield farm
    finally:
        destination.stop()


@pytest.fixture
def committing_farm(tmp_path: Path, corpus: Corpus, qrfarm_scp_port: int) -> Iterator[Farm]:
    """An Orthanc destination that reports Storage Commitment to the farm's
    storage SCP (learned so), the SCP in this process."""
    binary = require_peer(*ORTHANC_BINARIES)
    farm_entry = {
        "AET": QRFARM_SCP_AE,
        "Host": "127.0.0.1",
        "Port": qrfarm_scp_port,
        "AllowStorageCommitment": True,
    }
    orthanc = OrthancPeer.start(
        binary,
        tmp_path / "orthanc",
        {},
        ae_title="READING",
        extra_config={"DicomModalities": {"farm": farm_entry}},
    )
    try:

        def held() -> set[str]:
            answer = orthanc.rest_json("GET", "/instances?expand")
            return {str(i["MainDicomTags"]["SOPInstanceUID"]) for i in answer}

        with (
            _farm(tmp_path, corpus, orthanc.port, held, qrfarm_scp_port) as farm,
            _scp(farm, qrfarm_scp_port),
        ):
            with farm.client.sessions() as session, session.begin():
                node_id = _reading(session)
                profiles.observe(session, node_id, profiles.SUPPORTS_COMMITMENT, True)
            yield farm
    finally:
        orthanc.stop()


@contextmanager
def _scp(farm: Farm, port: int) -> Iterator[None]:
    """The farm's storage SCP in this process."""
    scp = StorageScp(
        farm.client.sessions,
        InstanceStorage(farm.settings.storage_root),
        ae_title=QRFARM_SCP_AE,
        port=port,
    )
    scp.start()
    try:
        yield
    finally:
        scp.stop(drain_timeout=10)


def _reading(session: Session) -> int:
    node_id = session.scalar(select(NodeRecord.id).where(NodeRecord.name == "reading"))
    assert node_id is not None
    return node_id


@contextmanager
def _farm(
    tmp_path: Path,
    corpus: Corpus,
    dest_port: int,
    held: Callable[[], set[str]],
    scp_port: int = 11113,
) -> Iterator[Farm]:
    source = SandboxPacs(
        [i.path for i in corpus.instances],
        behaviour=Behaviour(retrieve_delay_s=STORE_DELAY_S),
        destinations={"READING": ("127.0.0.1", dest_port), QRFARM_SCP_AE: ("127.0.0.1", scp_port)},
    )
    source_port = source.start()
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'q.db'}",
        storage_root=tmp_path / "storage",
        data_dir=tmp_path / "data",
        allowed_hosts=["127.0.0.1"],
        reconcile_grace_s=5,
        scp_ae_title=QRFARM_SCP_AE,
        scp_port=scp_port,
    )
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    client = Client(settings, engine, Sent())
    pool = AssociationPool(FilePermits(settings.data_dir / "permits"), "QRFARM", Timeouts())
    with client.sessions() as session, session.begin():
        upsert_node(session, NodeSpec("pacs", "SANDBOX", "127.0.0.1", source_port, role="source"))
        upsert_node(
            session, NodeSpec("reading", "READING", "127.0.0.1", dest_port, role="destination")
        )
    try:
        yield Farm(client, settings, pool, source, held)
    finally:
        pool.close()
        source.stop()
        engine.dispose()


def _move_and_check(farm: Farm, corpus: Corpus, method: str) -> int:
    """Run a move of a study of 6-20 instances; its job id, checked to have
    confirmed at least half of them before the move's final response."""
    study, instances = next((s, i) for s, i in corpus.studies().items() if 6 <= len(i) <= 20)
    deps = runner_deps(farm.settings, farm.client.sessions, farm.pool)
    job_id = farm.client.move(
        "pacs", Level.STUDY, {"StudyInstanceUID": study}, destination="reading"
    )
    started = time.monotonic()
    run_job(deps, job_id, "runner-test")
    assert time.monotonic() - started > STORE_DELAY_S * len(instances)
    status = farm.client.status(job_id)
    assert status["state"] == "completed", status
    assert status["verified_by"] == method
    assert status["confirmed"] == status["expected"] == len(instances)
    with farm.client.sessions() as session:
        [attempt] = session.scalars(select(Attempt).where(Attempt.job_id == job_id)).all()
        confirmations = session.execute(
            select(DeliveredInstance.confirmed_at, DeliveredInstance.verified_by).where(
                DeliveredInstance.job_id == job_id
            )
        ).all()
    assert attempt.ended_at is not None
    assert {by for _, by in confirmations} == {method}
    early = [at for at, _ in confirmations if at < attempt.ended_at]
    # Confirmed while the move ran; the last ones only after it.
    assert len(early) >= len(instances) // 2, (len(early), len(instances))
    assert farm.held() == {i.sop_uid for i in instances}
    return job_id


def test_a_move_verified_by_c_find_confirms_instances_before_its_final_response(
    farm: Farm, corpus: Corpus
) -> None:
    _move_and_check(farm, corpus, "find")


def test_a_committing_destination_commits_to_what_arrived_while_the_move_runs(
    committing_farm: Farm, corpus: Corpus
) -> None:
    job_id = _move_and_check(committing_farm, corpus, "commitment")
    with committing_farm.client.sessions() as session:
        requests = requests_of(session, job_id)
    # Several requests, each for what had arrived; the last one for the rest.
    assert len(requests) >= 2
    assert all(r.reported_at is not None for r in requests)
    assert (
        sum(len(r.committed_uids) for r in requests)
        >= committing_farm.client.status(job_id)["expected"]
    )


def test_a_destination_taking_two_associations_is_verified_only_after_the_move(
    farm: Farm, corpus: Corpus
) -> None:
    """The source's own associations to it for the move are not counted by the
    farm's permits: one more of the farm's could push it over its limit."""
    with farm.client.sessions() as session, session.begin():
        node = session.get_one(NodeRecord, _reading(session))
        node.max_associations = 2
    study, instances = next((s, i) for s, i in corpus.studies().items() if 6 <= len(i) <= 20)
    deps = runner_deps(farm.settings, farm.client.sessions, farm.pool)
    job_id = farm.client.move(
        "pacs", Level.STUDY, {"StudyInstanceUID": study}, destination="reading"
    )
    run_job(deps, job_id, "runner-test")
    status = farm.client.status(job_id)
    assert status["state"] == "completed", status
    with farm.client.sessions() as session:
        [attempt] = session.scalars(select(Attempt).where(Attempt.job_id == job_id)).all()
        confirmed_at = session.scalars(
            select(DeliveredInstance.confirmed_at).where(DeliveredInstance.job_id == job_id)
        ).all()
    assert attempt.ended_at is not None and len(confirmed_at) == len(instances)
    assert all(at >= attempt.ended_at for at in confirmed_at)
