"""One trace per job: submit, the run on a worker, the association, the C-MOVE
with its responses, every C-STORE the storage SCP recorded, and the
reconciliation, in order (all parts in this process, spans in memory)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from qrfarm.client import Client
from qrfarm.config import Settings
from qrfarm.dicom import Level, Timeouts
from qrfarm.jobs.nodes import NodeSpec, upsert_node
from qrfarm.jobs.runner import run_job
from qrfarm.models import make_engine, upgrade
from qrfarm.sandbox.synthetic import Corpus
from qrfarm.scp import StorageScp
from qrfarm.storage import InstanceStorage
from qrfarm.workers.permits import FilePermits
from qrfarm.workers.pool import AssociationPool
from qrfarm.workers.process import runner_deps
from tests.conftest import QRFARM_SCP_AE
from tests.peers.orthanc import OrthancPeer


class Sent:
    """A dispatcher that only remembers: the test runs the job itself."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[object], str]] = []

    def send(self, task: str, args: list[object], queue: str, priority: int = 0) -> None:
        self.messages.append((task, args, queue))


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


@pytest.fixture
def settings(tmp_path: Path, qrfarm_scp_port: int) -> Iterator[Settings]:
    yield Settings(
        database_url=f"sqlite:///{tmp_path / 'q.db'}",
        storage_root=tmp_path / "storage",
        data_dir=tmp_path / "data",
        scp_port=qrfarm_scp_port,
        scp_ae_title=QRFARM_SCP_AE,
        allowed_hosts=["127.0.0.1"],
        reconcile_grace_s=2,
    )


def test_a_move_job_is_one_trace_from_submit_to_the_last_c_store(
    spans: InMemorySpanExporter, settings: Settings, orthanc: OrthancPeer, corpus: Corpus
) -> None:
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    client = Client(settings, engine, Sent())
    with client.sessions() as session, session.begin():
        upsert_node(session, NodeSpec("orthanc", orthanc.ae_title, "127.0.0.1", orthanc.port))
    scp = StorageScp(
        client.sessions,
        InstanceStorage(settings.storage_root),
        ae_title=QRFARM_SCP_AE,
        port=settings.scp_port,
    )
    scp.start()
    pool = AssociationPool(FilePermits(settings.data_dir / "permits"), "QRFARM", Timeouts())
    deps = runner_deps(settings, client.sessions, pool)
    try:
        study = corpus.large_study_uid
        count = len(corpus.studies()[study])
        spans.clear()
        job_id = client.move("orthanc", Level.STUDY, {"StudyInstanceUID": study})
        run_job(deps, job_id, "tracing-test", task_id="task-1")
        assert client.status(job_id)["state"] == "completed"
    finally:
        pool.close()
        scp.stop(drain_timeout=10)
        engine.dispose()

    finished: list[ReadableSpan] = sorted(spans.get_finished_spans(), key=lambda s: s.start_time)
    assert len({s.context.trace_id for s in finished}) == 1, "one trace per job"
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in finished:
        by_name.setdefault(span.name, []).append(span)
    [submit] = by_name["qrfarm.job.submit"]
    [run] = by_name["qrfarm.job.run"]
    [move] = by_name["dicom.c-move"]
    [reconcile] = by_name["qrfarm.job.reconcile"]
    stores = by_name["qrfarm.scp.c-store"]
    assert finished[0] is submit and submit.parent is None
    assert submit.attributes is not None and submit.attributes["qrfarm.job.id"] == job_id
    assert run.parent is not None and run.parent.span_id == submit.context.span_id
    assert by_name["dicom.associate"][0].parent.span_id == run.context.span_id  # type: ignore[union-attr]
    assert move.parent is not None and move.parent.span_id == run.context.span_id
    # Every C-STORE recorded is in the job's trace, under its submit, while the move ran.
    assert len(stores) == count
    assert {s.parent.span_id for s in stores} == {submit.context.span_id}  # type: ignore[union-attr]
    assert all(move.start_time <= s.start_time <= move.end_time for s in stores)  # type: ignore[operator]
    # The responses are the move's events: pending ones, then the final success.
    statuses = [e.attributes["dicom.status"] for e in move.events]  # type: ignore[index]
    assert statuses[-1] == "0x0000" and set(statuses[:-1]) <= {"0xFF00"}
    assert reconcile.start_time >= move.end_time  # type: ignore[operator]
    assert reconcile.attributes["qrfarm.job.state"] == "completed"  # type: ignore[index]
