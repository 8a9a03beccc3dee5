"""A move to a destination verified by C-FIND confirms what arrived while the
move still runs: by its final response most instances are confirmed, and the
verification after it asks only for the rest."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from qrfarm.client import Client
from qrfarm.config import Settings
from qrfarm.dicom import Level, Timeouts
from qrfarm.jobs import profiles
from qrfarm.jobs.nodes import NodeSpec, upsert_node
from qrfarm.jobs.runner import run_job
from qrfarm.models import Attempt, DeliveredInstance, NodeRecord, make_engine, upgrade
from qrfarm.sandbox.destination import SandboxDestination
from qrfarm.sandbox.pacs import Behaviour, SandboxPacs
from qrfarm.sandbox.synthetic import Corpus
from qrfarm.workers.permits import FilePermits
from qrfarm.workers.pool import AssociationPool
from qrfarm.workers.process import runner_deps
from tests.jobs.conftest import Sent

# Each C-STORE of the move waits this long at the source: a move of 6-20
# instances then runs for a second or more, several rounds of finds.
STORE_DELAY_S = 0.12


@dataclass
class Farm:
    client: Client
    settings: Settings
    pool: AssociationPool
    source: SandboxPacs
    destination: SandboxDestination


@pytest.fixture
def farm(tmp_path: Path, corpus: Corpus) -> Iterator[Farm]:
    destination = SandboxDestination(tmp_path / "dest", ae_title="READING")
    dest_port = destination.start()
    source = SandboxPacs(
        [i.path for i in corpus.instances],
        behaviour=Behaviour(retrieve_delay_s=STORE_DELAY_S),
        destinations={"READING": ("127.0.0.1", dest_port)},
    )
    source_port = source.start()
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'q.db'}",
        storage_root=tmp_path / "storage",
        data_dir=tmp_path / "data",
        allowed_hosts=["127.0.0.1"],
        reconcile_grace_s=5,
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
        node_id = session.scalar(select(NodeRecord.id).where(NodeRecord.name == "reading"))
        assert node_id is not None
        # Learned earlier: it does not do Storage Commitment (the sandbox refuses it).
        profiles.observe(session, node_id, profiles.SUPPORTS_COMMITMENT, False)
    try:
        yield Farm(client, settings, pool, source, destination)
    finally:
        pool.close()
        source.stop()
        destination.stop()
        engine.dispose()


def test_a_move_verified_by_c_find_confirms_instances_before_its_final_response(
    farm: Farm, corpus: Corpus
) -> None:
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
    assert status["verified_by"] == "find"
    assert status["confirmed"] == status["expected"] == len(instances)
    with farm.client.sessions() as session:
        [attempt] = session.scalars(select(Attempt).where(Attempt.job_id == job_id)).all()
        confirmed_at = session.scalars(
            select(DeliveredInstance.confirmed_at).where(DeliveredInstance.job_id == job_id)
        ).all()
    assert attempt.ended_at is not None
    early = [at for at in confirmed_at if at < attempt.ended_at]
    # Confirmed while the move ran; the last ones only after it.
    assert len(early) >= len(instances) // 2, (len(early), len(instances))
    assert farm.destination.held == {i.sop_uid for i in instances}
