"""DICOMweb jobs against services (and held files) no archive should present:
a search naming instances outside what was asked, a STOW-RS answer with a
malformed Failure Reason, a held file that is not the instance recorded or
not DICOM at all. Each is kept out of the record, named, and never crashes
the job."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from qrfarm.dicom import Level
from qrfarm.models import Job
from qrfarm.sandbox.synthetic import Corpus
from tests.peers.fake_dicomweb import FakeDicomWeb

from .test_dicomweb import (  # noqa: F401 (the fixtures)
    WebBench,
    _file_of,
    bench,
    small_studies,
    web_orthanc,
)


@contextmanager
def held_file_replaced(bench: WebBench, sop_uid: str, data: bytes) -> Iterator[Path]:  # noqa: F811
    """The farm's file of ``sop_uid`` holding ``data`` for a while (put back after)."""
    path = bench.settings.storage_root / _file_of(bench, sop_uid)
    original = path.read_bytes()
    path.write_bytes(data)
    try:
        yield path
    finally:
        path.write_bytes(original)


def test_a_wado_rs_retrieve_keeps_only_the_instances_its_identifier_names(
    bench: WebBench,  # noqa: F811
    corpus: Corpus,
) -> None:
    """The source's IMAGE-level search also names an instance of another study
    (it ignores the filters): that one is neither expected nor retrieved."""
    (study, instances), (_, others) = list(small_studies(corpus).items())
    source = FakeDicomWeb(
        served=[i.path.read_bytes() for i in instances], foreign=[others[0].path.read_bytes()]
    ).start()
    try:
        bench.add_web_node("careless", "CARELESS", source.url, retrieve_transport="dicomweb")
        status = bench.run(bench.client.get("careless", Level.STUDY, {"StudyInstanceUID": study}))
        assert status["state"] == "completed", status
        assert status["expected"] == status["recorded"] == len(instances)
        assert all(f"/studies/{study}" in path for path in source.wado_paths), source.wado_paths
    finally:
        source.stop()


def test_a_failure_reason_with_several_values_leaves_the_forward_partial_naming_it(
    bench: WebBench,  # noqa: F811
    corpus: Corpus,
) -> None:
    study, instances = list(small_studies(corpus).items())[1]
    refused = instances[0].sop_uid
    destination = FakeDicomWeb(refuse={refused: 0x0110}, reason_values=[0x0110, 0xA700]).start()
    try:
        bench.add_web_node("twofold", "TWOFOLD", destination.url, delivery_transport="dicomweb")
        retrieved = bench.run(bench.client.get("web", Level.STUDY, {"StudyInstanceUID": study}))
        forward = bench.run(bench.client.forward(retrieved["id"], "twofold"))
        assert forward["state"] == "partial", forward
        assert forward["missing_uids"] == [refused]
        assert forward["recorded"] == len(instances) - 1
    finally:
        destination.stop()


def test_a_held_file_that_is_another_instance_or_no_dicom_is_not_sent_by_stow_rs(
    bench: WebBench,  # noqa: F811
    corpus: Corpus,
) -> None:
    """One held file holds another instance's bytes, one holds no DICOM: neither
    is sent (nor credited), the others are, and the forward ends partial
    naming the two."""
    study, instances = next(iter(small_studies(corpus).items()))
    swapped, broken, other = instances[0], instances[1], instances[2]
    destination = FakeDicomWeb().start()
    try:
        bench.add_web_node("checked", "CHECKED", destination.url, delivery_transport="dicomweb")
        retrieved = bench.run(bench.client.get("web", Level.STUDY, {"StudyInstanceUID": study}))
        assert retrieved["state"] == "completed", retrieved
        forward_id = bench.client.forward(retrieved["id"], "checked")
        with (
            held_file_replaced(bench, swapped.sop_uid, other.path.read_bytes()),
            held_file_replaced(bench, broken.sop_uid, b"not DICOM at all" * 64),
        ):
            forward = bench.run(forward_id)
        assert forward["state"] == "partial", forward
        assert forward["missing_uids"] == sorted([swapped.sop_uid, broken.sop_uid])
        assert forward["recorded"] == len(instances) - 2
        sent = [uid for request in destination.requests for uid in request]
        assert sorted(sent) == sorted(i.sop_uid for i in instances[1:] if i is not broken)
    finally:
        destination.stop()


def test_a_forward_whose_check_fails_ends_naming_what_is_not_confirmed(
    bench: WebBench,  # noqa: F811
    corpus: Corpus,
) -> None:
    """Sent, and the destination's QIDO-RS answers 500: nothing is confirmed,
    the attempt still ends (never the task), and the forward names every
    instance unconfirmed and why."""
    study, instances = list(small_studies(corpus).items())[1]
    destination = FakeDicomWeb(check_status=500).start()
    try:
        bench.add_web_node("unchecked", "UNCHECKED", destination.url, delivery_transport="dicomweb")
        retrieved = bench.run(bench.client.get("web", Level.STUDY, {"StudyInstanceUID": study}))
        forward_id = bench.client.forward(retrieved["id"], "unchecked")
        with bench.client.sessions() as session, session.begin():
            session.get_one(Job, forward_id).max_attempts = 1
        forward = bench.run(forward_id)
        assert forward["state"] == "failed", forward
        assert forward["missing_uids"] == sorted(i.sop_uid for i in instances)
        assert "HTTP 500" in forward["error"], forward["error"]
        assert len(destination.requests) == 1
    finally:
        destination.stop()
