"""Jobs on a DICOMweb node, run by the runner in this process against Orthanc
with its DICOMweb plugin: a find through QIDO-RS gives the answers a C-FIND
job on the same Orthanc gives; a retrieve through WADO-RS brings each
instance into the farm, recorded and byte-equal to what Orthanc holds, and
reconciled; a retry asks for exactly what is missing."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import delete, select

from qrfarm.client import Client
from qrfarm.config import Settings
from qrfarm.dicom import Level, Timeouts
from qrfarm.jobs.nodes import NodeSpec, upsert_node
from qrfarm.jobs.runner import RunnerDeps, run_job
from qrfarm.models import Job, JobState, MatchedBy, ReceivedInstance, make_engine, upgrade
from qrfarm.sandbox.synthetic import Corpus
from qrfarm.workers.permits import FilePermits
from qrfarm.workers.pool import AssociationPool
from qrfarm.workers.process import runner_deps
from qrfarm.workers.web_slots import WebSlots
from tests.peers import dataset_bytes
from tests.peers.dicomweb import dicomweb_url, start_dicomweb_orthanc
from tests.peers.fake_dicomweb import FakeDicomWeb
from tests.peers.orthanc import OrthancPeer

from .conftest import Sent


def small_studies(corpus: Corpus) -> dict[str, list[Any]]:
    """Two studies of a few instances each: quick to load and to retrieve."""
    studies = sorted(
        ((uid, found) for uid, found in corpus.studies().items() if 3 <= len(found) <= 8),
        key=lambda pair: pair[0],
    )
    return dict(studies[:2])


@pytest.fixture(scope="module")
def web_orthanc(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancPeer]:
    peer = start_dicomweb_orthanc(tmp_path_factory.mktemp("orthanc-dicomweb"), "WEBPACS")
    try:
        peer.load(i.path for found in small_studies(corpus).values() for i in found)
        yield peer
    finally:
        peer.stop()


@dataclass
class WebBench:
    client: Client
    deps: RunnerDeps
    settings: Settings
    orthanc: OrthancPeer

    def run(self, job_id: int) -> dict[str, Any]:
        run_job(self.deps, job_id, "dicomweb-test")
        return self.client.status(job_id, responses=True)

    def add_web_node(self, name: str, ae_title: str, url: str, **options: Any) -> int:
        """A node reached by DICOMweb at ``url`` (on 127.0.0.1, its port), with
        its transports and limits as ``options`` (NodeSpec's); its id."""
        with self.client.sessions() as session, session.begin():
            port = urlsplit(url).port or 80
            spec = NodeSpec(name, ae_title, "127.0.0.1", port, dicomweb_url=url, **options)
            return upsert_node(session, spec).id


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory, web_orthanc: OrthancPeer) -> Iterator[WebBench]:
    """One database for the module's jobs (each test reads its own jobs only)."""
    tmp_path = tmp_path_factory.mktemp("dicomweb-bench")
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'q.db'}",
        storage_root=tmp_path / "storage",
        data_dir=tmp_path / "data",
        allowed_hosts=["127.0.0.1"],
        reconcile_grace_s=2,
    )
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    client = Client(settings, engine, Sent())
    pool = AssociationPool(FilePermits(settings.data_dir / "permits"), "QRFARM", Timeouts())
    deps = runner_deps(settings, client.sessions, pool, Sent())
    with client.sessions() as session, session.begin():
        upsert_node(session, NodeSpec("dimse", "WEBPACS", "127.0.0.1", web_orthanc.port))
        upsert_node(
            session,
            NodeSpec(
                "web",
                "WEBPACS",
                "127.0.0.1",
                web_orthanc.http_port,
                dicomweb_url=dicomweb_url(web_orthanc),
                retrieve_transport="dicomweb",
            ),
        )
    try:
        yield WebBench(client, deps, settings, web_orthanc)
    finally:
        pool.close()
        engine.dispose()


def answers_by_study(answers: list[dict[str, Any]], keys: list[str]) -> dict[str, dict[str, Any]]:
    """Each answer's returned keys (those the identifier asked for), by Study UID."""
    return {a["0020000D"]["Value"][0]: {k: a.get(k) for k in keys} for a in answers}


@pytest.mark.parametrize(
    ("level", "keys"),
    [
        (Level.STUDY, {"PatientID": "P*"}),
        (Level.STUDY, {"StudyDate": "20000101-20301231", "ModalitiesInStudy": ""}),
    ],
    ids=["wildcard", "date-range"],
)
def test_a_find_through_qido_rs_stores_the_answers_a_c_find_job_stores(
    bench: WebBench, level: Level, keys: dict[str, str]
) -> None:
    by_dimse = bench.run(bench.client.find("dimse", level, keys))
    by_web = bench.run(bench.client.find("web", level, keys))
    assert by_dimse["state"] == by_web["state"] == "completed", by_web
    dimse_answers = bench.client.results(by_dimse["id"])
    web_answers = bench.client.results(by_web["id"])
    assert len(web_answers) == len(dimse_answers) == 2
    # Every key the identifier asked for, with the same value (names decoded).
    asked = sorted(Job_identifier_keys(bench, by_web["id"]))
    assert answers_by_study(web_answers, asked) == answers_by_study(dimse_answers, asked)
    # QIDO-RS was asked, not C-FIND: no DIMSE response recorded for it.
    assert by_web["attempts"][0]["responses"] == []


def Job_identifier_keys(bench: WebBench, job_id: int) -> list[str]:  # noqa: N802
    with bench.client.sessions() as session:
        identifier = session.get_one(Job, job_id).identifier
    return [tag for tag in identifier if tag != "00080052"]


def test_a_find_at_patient_level_is_refused_over_qido_rs_naming_the_rule(bench: WebBench) -> None:
    status = bench.run(
        bench.client.find("web", Level.PATIENT, {"PatientID": "P*"}, root=_patient())
    )
    assert status["state"] == "failed"
    assert "QIDO-RS (DICOMweb) has no PATIENT level" in status["error"]


def _patient() -> Any:
    from qrfarm.dicom import Root

    return Root.PATIENT


def test_a_retrieve_through_wado_rs_records_every_instance_byte_equal(
    bench: WebBench, corpus: Corpus
) -> None:
    study, instances = next(iter(small_studies(corpus).items()))
    status = bench.run(bench.client.get("web", Level.STUDY, {"StudyInstanceUID": study}))
    assert status["state"] == "completed", status
    assert status["expected"] == status["recorded"] == len(instances)
    assert status["reported"]["completed"] == len(instances)
    assert status["missing_uids"] == []
    with bench.client.sessions() as session:
        rows = session.scalars(
            select(ReceivedInstance).where(ReceivedInstance.job_id == status["id"])
        ).all()
    assert {r.sop_instance_uid for r in rows} == {i.sop_uid for i in instances}
    assert {r.matched_by for r in rows} == {MatchedBy.WADO}
    for row in rows:
        held = (bench.settings.storage_root / row.file_path).read_bytes()
        assert dataset_bytes(held) == dataset_bytes(
            bench.orthanc.stored_bytes(row.sop_instance_uid)
        )


def test_a_retry_of_a_wado_rs_retrieve_asks_for_only_the_missing_instance(
    bench: WebBench, corpus: Corpus
) -> None:
    study, instances = list(small_studies(corpus).items())[1]
    series = instances[0].series_uid
    in_series = [i for i in instances if i.series_uid == series]
    status = bench.run(
        bench.client.get(
            "web", Level.SERIES, {"StudyInstanceUID": study, "SeriesInstanceUID": series}
        )
    )
    assert status["state"] == "completed", status
    assert status["recorded"] == len(in_series)
    # As if one instance had not come: its record gone, the job partial
    # naming it. The retry asks WADO-RS for that instance alone.
    lost = in_series[0].sop_uid
    with bench.client.sessions() as session, session.begin():
        session.execute(
            delete(ReceivedInstance).where(
                ReceivedInstance.job_id == status["id"], ReceivedInstance.sop_instance_uid == lost
            )
        )
        job = session.get_one(Job, status["id"])
        job.recorded_count -= 1
        job.state = JobState.PARTIAL
        job.missing_uids = [lost]
    bench.client.retry(status["id"])
    with bench.client.sessions() as session:
        assert session.get_one(Job, status["id"]).retry_uids == [lost]
    status = bench.run(status["id"])
    assert status["state"] == "completed", status
    assert status["recorded"] == len(in_series)
    assert status["reported"]["completed"] == 1  # the retry's WADO-RS brought one instance


@pytest.fixture(scope="module")
def stow_destination(
    bench: WebBench, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OrthancPeer]:
    """An empty Orthanc with the DICOMweb plugin, registered as a destination
    the farm sends to by STOW-RS."""
    peer = start_dicomweb_orthanc(tmp_path_factory.mktemp("stow-destination"), "STOWDEST")
    try:
        bench.add_web_node(
            "stowdest", "STOWDEST", dicomweb_url(peer), delivery_transport="dicomweb"
        )
        yield peer
    finally:
        peer.stop()


def test_a_forward_to_a_dicomweb_destination_is_sent_by_stow_rs_and_confirmed_by_qido_rs(
    bench: WebBench, stow_destination: OrthancPeer, corpus: Corpus
) -> None:
    study, instances = next(iter(small_studies(corpus).items()))
    retrieved = bench.run(bench.client.get("web", Level.STUDY, {"StudyInstanceUID": study}))
    assert retrieved["state"] == "completed", retrieved
    forward = bench.run(bench.client.forward(retrieved["id"], "stowdest"))
    assert forward["state"] == "completed", forward
    assert forward["expected"] == forward["recorded"] == len(instances)
    assert forward["missing_uids"] == [] and forward["failed_uids"] == []
    assert forward["verified_by"] == "qido-rs"
    # The destination holds each instance, as the farm held it.
    for instance in instances:
        held = (bench.settings.storage_root / _file_of(bench, instance.sop_uid)).read_bytes()
        assert dataset_bytes(stow_destination.stored_bytes(instance.sop_uid)) == dataset_bytes(held)


def _file_of(bench: WebBench, sop_uid: str) -> str:
    with bench.client.sessions() as session:
        return (
            session.scalars(
                select(ReceivedInstance.file_path).where(
                    ReceivedInstance.sop_instance_uid == sop_uid
                )
            ).first()
            or ""
        )


def test_a_dicomweb_job_waits_for_its_nodes_slot_like_an_association(bench: WebBench) -> None:
    """A node's max_associations bounds its DICOMweb jobs across the farm: with
    its one slot held elsewhere, a job goes back to its queue (not an attempt)."""
    node_id = bench.add_web_node(
        "web-one",
        "WEBPACS",
        dicomweb_url(bench.orthanc),
        max_associations=1,
        retrieve_transport="dicomweb",
    )
    other = WebSlots(FilePermits(bench.settings.data_dir / "permits"))
    job_id = bench.client.find("web-one", Level.STUDY, {"PatientID": "P*"})
    with other.hold(node_id, 1):
        status = bench.run(job_id)
    assert status["state"] == "queued"
    assert status["attempt_count"] == 0
    assert [a["outcome"] for a in status["attempts"]] == ["node busy"]
    status = bench.run(job_id)
    assert status["state"] == "completed", status


def test_no_patient_key_of_a_qido_rs_find_reaches_the_log_at_debug(
    bench: WebBench, corpus: Corpus, caplog: pytest.LogCaptureFixture
) -> None:
    """The query string carries the patient keys: neither dicomweb-client's
    nor urllib3's DEBUG lines (which write it out) may reach the log."""
    instance = next(iter(small_studies(corpus).values()))[0]
    caplog.set_level(logging.DEBUG)
    status = bench.run(bench.client.find("web", Level.STUDY, {"PatientID": instance.patient_id}))
    assert status["state"] == "completed", status
    assert len(bench.client.results(status["id"])) == 1
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "QIDO-RS answered 1 match" in logged  # the log was captured at all
    assert instance.patient_id not in logged


def test_an_instance_a_stow_rs_destination_refuses_leaves_the_forward_partial_naming_it(
    bench: WebBench, corpus: Corpus
) -> None:
    """The STOW-RS answer is read per instance: one named in the Failed SOP
    Sequence is not confirmed, the forward ends partial naming it, and its
    retry sends that instance alone."""
    study, instances = list(small_studies(corpus).items())[1]
    refused = instances[0].sop_uid
    destination = FakeDicomWeb(refuse={refused: 0x0110}).start()
    try:
        bench.add_web_node("refusing", "REFUSING", destination.url, delivery_transport="dicomweb")
        retrieved = bench.run(bench.client.get("web", Level.STUDY, {"StudyInstanceUID": study}))
        assert retrieved["state"] == "completed", retrieved
        forward = bench.run(bench.client.forward(retrieved["id"], "refusing"))
        assert forward["state"] == "partial", forward
        assert forward["missing_uids"] == [refused]
        assert forward["failed_uids"] == [refused]
        assert "STOW-RS Failure Reason 0x0110" in forward["error"]
        assert forward["recorded"] == len(instances) - 1
        destination.refuse.clear()
        bench.client.retry(forward["id"])
        forward = bench.run(forward["id"])
        assert forward["state"] == "completed", forward
        assert forward["recorded"] == len(instances)
        assert destination.requests[-1] == [refused]  # the retry sent that one alone
    finally:
        destination.stop()


def test_a_cancel_stops_a_wado_rs_retrieve_inside_a_study_keeping_what_arrived(
    bench: WebBench, corpus: Corpus
) -> None:
    """A study comes as one WADO-RS answer: a cancel must not wait for all of
    it. The service sends the first instance whole, then the rest a few bytes
    at a time; cancelled meanwhile, the retrieve closes the answer, the first
    instance stays recorded and the job ends cancelled."""
    study, instances = next(iter(small_studies(corpus).items()))
    slow = FakeDicomWeb(served=[i.path.read_bytes() for i in instances], trickle_from=1).start()
    try:
        bench.add_web_node("slowweb", "SLOWWEB", slow.url, retrieve_transport="dicomweb")
        job_id = bench.client.get("slowweb", Level.STUDY, {"StudyInstanceUID": study})
        running = threading.Thread(target=bench.run, args=(job_id,), daemon=True)
        running.start()
        deadline = time.monotonic() + 60
        while _rows_of(bench, job_id) < 1:
            assert time.monotonic() < deadline, "the first instance was never recorded"
            time.sleep(0.05)
        assert bench.client.cancel(job_id) == "running"
        running.join(60)
        assert not running.is_alive(), "the retrieve went on after its cancel"
        status = bench.client.status(job_id)
        assert status["state"] == "cancelled", status
        assert status["recorded"] == 1
        assert slow.cut_short.wait(10), "the WADO-RS answer was read to its end"
    finally:
        slow.stop()


def _rows_of(bench: WebBench, job_id: int) -> int:
    with bench.client.sessions() as session:
        return len(
            session.scalars(
                select(ReceivedInstance.id).where(ReceivedInstance.job_id == job_id)
            ).all()
        )


def test_an_instance_a_stow_rs_destination_says_it_stored_but_does_not_hold_stays_unconfirmed(
    bench: WebBench, corpus: Corpus
) -> None:
    """The STOW-RS answer alone is not proof: an instance it lists as stored
    that QIDO-RS then does not find is not confirmed, and the forward ends
    partial naming it."""
    study, instances = list(small_studies(corpus).items())[1]
    forgotten = instances[-1].sop_uid
    destination = FakeDicomWeb(forget={forgotten}).start()
    try:
        bench.add_web_node(
            "forgetting", "FORGETTING", destination.url, delivery_transport="dicomweb"
        )
        retrieved = bench.run(bench.client.get("web", Level.STUDY, {"StudyInstanceUID": study}))
        assert retrieved["state"] == "completed", retrieved
        forward_id = bench.client.forward(retrieved["id"], "forgetting")
        with bench.client.sessions() as session, session.begin():
            session.get_one(Job, forward_id).max_attempts = 2
        forward = bench.run(forward_id)
        # Missing, not refused: retried (sending that one alone) while attempts are left.
        while forward["state"] == "queued":
            forward = bench.run(forward["id"])
        assert forward["state"] == "partial", forward
        assert forward["missing_uids"] == [forgotten]
        assert forward["failed_uids"] == []
        assert forward["recorded"] == len(instances) - 1
        first, *retries = destination.requests
        assert sorted(first) == sorted(i.sop_uid for i in instances)
        assert retries and all(sent == [forgotten] for sent in retries)
        assert len(retries) == forward["attempt_count"] - 1
    finally:
        destination.stop()


def test_two_dicomweb_destinations_behind_one_address_each_get_their_own_deliveries(
    bench: WebBench, corpus: Corpus
) -> None:
    """Two archives behind one HTTP server (same AE title, host and port, other
    paths): a forward to the second is sent to, and verified at, the second's
    URL, never the first's."""
    study, instances = next(iter(small_studies(corpus).items()))
    server = FakeDicomWeb().start()
    try:
        for name, path in (("archive-a", "/a/dicom-web"), ("archive-b", "/b/dicom-web")):
            url = f"http://127.0.0.1:{server.port}{path}"
            bench.add_web_node(name, "ARCHIVE", url, delivery_transport="dicomweb")
        retrieved = bench.run(bench.client.get("web", Level.STUDY, {"StudyInstanceUID": study}))
        assert retrieved["state"] == "completed", retrieved
        forward = bench.run(bench.client.forward(retrieved["id"], "archive-b"))
        assert forward["state"] == "completed", forward
        assert forward["confirmed"] == len(instances)
        assert server.paths and all(p.startswith("/b/dicom-web/") for p in server.paths)
    finally:
        server.stop()
