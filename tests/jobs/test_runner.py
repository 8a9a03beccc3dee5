"""The runner, in this process against a sandbox PACS: what happens to a job
whose node has all its association permits held by another worker."""

from __future__ import annotations

from pathlib import Path

from qrfarm.client import Client
from qrfarm.config import Settings
from qrfarm.dicom import Level, Node, Timeouts
from qrfarm.jobs.dispatch import RUN_JOB, node_queue
from qrfarm.jobs.nodes import NodeSpec, upsert_node
from qrfarm.jobs.runner import RunnerDeps, run_job
from qrfarm.models import make_engine, upgrade
from qrfarm.sandbox.pacs import Behaviour, SandboxPacs
from qrfarm.sandbox.synthetic import Corpus
from qrfarm.storage import InstanceStorage
from qrfarm.workers.get_store import GetStore
from qrfarm.workers.permits import FilePermits
from qrfarm.workers.pool import AssociationPool
from qrfarm.workers.process import policy_from


class Sent:
    """A dispatcher that only remembers what was sent."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[object], str]] = []

    def send(self, task: str, args: list[object], queue: str) -> None:
        self.messages.append((task, args, queue))


def test_a_job_whose_node_is_busy_goes_back_to_its_queue_at_once(
    tmp_path: Path, corpus: Corpus
) -> None:
    pacs = SandboxPacs([i.path for i in corpus.instances[:5]], behaviour=Behaviour())
    port = pacs.start()
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'q.db'}",
        storage_root=tmp_path / "storage",
        data_dir=tmp_path / "data",
        allowed_hosts=["127.0.0.1"],
    )
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    submitted, resent = Sent(), Sent()
    client = Client(settings, engine, submitted)
    with client.sessions() as session, session.begin():
        upsert_node(session, NodeSpec("busy", "SANDBOX", "127.0.0.1", port, max_associations=1))
    # Another worker process holds the node's only permit, in use.
    other = AssociationPool(FilePermits(settings.data_dir / "permits"), "OTHER", Timeouts())
    pool = AssociationPool(FilePermits(settings.data_dir / "permits"), "QRFARM", Timeouts())
    deps = RunnerDeps(
        sessions=client.sessions,
        connections=pool,
        get_recorder=GetStore(client.sessions, InstanceStorage(settings.storage_root)),
        calling_ae="QRFARM",
        policy=policy_from(settings),
        dispatcher=resent,
    )
    try:
        job_id = client.find("busy", Level.STUDY, {"PatientID": "*"})
        with other.query_retrieve(Node("SANDBOX", "127.0.0.1", port, max_associations=1)):
            run_job(deps, job_id, "runner-test")
        status = client.status(job_id, responses=True)
        assert status["state"] == "queued"
        assert status["attempt_count"] == 0  # waiting for a permit is not an attempt
        assert [a["outcome"] for a in status["attempts"]] == ["node busy"]
        assert resent.messages == [(RUN_JOB, [job_id], node_queue("busy"))]
        # Its next run, with the permit free, is an attempt like any other.
        run_job(deps, job_id, "runner-test")
        status = client.status(job_id)
        assert status["state"] == "completed"
        assert status["attempt_count"] == 1
    finally:
        other.close()
        pool.close()
        pacs.stop()
        engine.dispose()
