"""Fixtures for the storage SCP: a migrated database (SQLite or PostgreSQL) and a running SCP."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.jobs.leases import claim
from qrfarm.jobs.moves import allocate_message_id
from qrfarm.jobs.nodes import NodeSpec, upsert_node
from qrfarm.jobs.policy import JobPolicy
from qrfarm.models import Attempt, Job, JobKind, JobState, NodeRecord
from qrfarm.scp import StorageScp, service
from qrfarm.storage import InstanceStorage
from tests.conftest import CALLING_AE, QRFARM_SCP_AE
from tests.databases import database_url, migrated
from tests.postgres_cluster import OwnPostgres, run_own_postgres

# The nodes the SCP knows: the two PACS (their C-STOREs come from their own
# AE titles), a DCMTK sender, and the pure-Python sandbox PACS.
NODES = [
    NodeSpec("orthanc", "ORTHANC", "127.0.0.1", 4242),
    NodeSpec("dcmqrscp", "DCMQRSCP", "127.0.0.1", 5678),
    NodeSpec("sender", "STORESCU", "127.0.0.1", 104, store_ae_titles=["STORESCU2"]),
    NodeSpec("sandbox", "SANDBOX", "127.0.0.1", 11112),
]


@pytest.fixture(autouse=True)
def receive_path(monkeypatch: pytest.MonkeyPatch) -> str:
    """The SCP's receive path under test: QRFARM_SCP_RECEIVE_PATH selects it for
    the SCPs made here and, through the settings, for SCP processes started."""
    path = os.environ.get("QRFARM_SCP_RECEIVE_PATH") or service.DEFAULT_RECEIVE_PATH
    monkeypatch.setattr(service, "DEFAULT_RECEIVE_PATH", path)
    return path


def limit_of_the_pynetdicom_path(
    request: pytest.FixtureRequest, receive_path: str, reason: str, *, strict: bool = True
) -> None:
    """What the pynetdicom receive path is known not to do: under it the test
    is a strict xfail naming why (it must go on failing there). ``strict``
    False only where that path's failure depends on timing: it may pass there
    on a loaded machine."""
    if receive_path == "pynetdicom":
        request.applymarker(pytest.mark.xfail(strict=strict, reason=reason))


@dataclass
class Db:
    url: str
    engine: Engine
    sessions: sessionmaker[Session]

    def node_id(self, name: str) -> int:
        with self.sessions() as session:
            node_id = session.scalar(select(NodeRecord.id).where(NodeRecord.name == name))
        assert node_id is not None
        return node_id

    def new_move(self, node: str, identifier: Dataset, destination: str = QRFARM_SCP_AE) -> Job:
        """A running move job with one attempt and its Message ID reserved."""
        with self.sessions() as session, session.begin():
            job = Job(
                kind=JobKind.MOVE,
                root="study",
                level=str(identifier.QueryRetrieveLevel),
                identifier=identifier.to_json_dict(),
                node_id=self.node_id(node),
                destination=destination,
                state=JobState.QUEUED,
            )
            session.add(job)
            session.flush()
            # As the runner does: claim it (running, an attempt), reserve a Message ID.
            claimed = claim(session, job.id, "test-worker", JobPolicy())
            assert claimed is not None
            attempt = session.get_one(Attempt, claimed[0].attempt_id)
            allocate_message_id(session, attempt, CALLING_AE)
            job_id, message_id = job.id, attempt.message_id
        with self.sessions() as session:
            job = session.get_one(Job, job_id)
            job.attempts[0]  # loaded while the session is open
        assert message_id is not None
        return job


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    with database_url(request.param, tmp_path) as url, migrated(url) as (engine, sessions):
        with sessions() as session, session.begin():
            for spec in NODES:
                upsert_node(session, spec)
        yield Db(url, engine, sessions)


@pytest.fixture
def storage_root(tmp_path: Path) -> Path:
    return tmp_path / "storage"


@pytest.fixture
def scp(db: Db, storage_root: Path, qrfarm_scp_port: int) -> Iterator[StorageScp]:
    service = StorageScp(
        db.sessions,
        InstanceStorage(storage_root),
        ae_title=QRFARM_SCP_AE,
        port=qrfarm_scp_port,
    )
    service.start()
    try:
        yield service
    finally:
        service.stop(drain_timeout=10)


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[OwnPostgres]:
    """A PostgreSQL cluster of the test's own, which it may stop and start."""
    with run_own_postgres(tmp_path / "pg") as cluster:
        yield cluster
