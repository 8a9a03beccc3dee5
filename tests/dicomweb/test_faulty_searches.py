"""QIDO-RS against services that do not keep to their search: one that
ignores offset (each page alike, a full one) is asked a bounded number of
times; one that ignores its filters has its answers outside the keys asked
for left out."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset

from qrfarm.dicom import Root
from qrfarm.dicomweb import WebService, WebTimeouts, open_client, qido, stow
from qrfarm.dicomweb.qido import PAGE_SIZE
from qrfarm.errors import DicomWebResponseError
from qrfarm.sandbox.synthetic import Corpus
from tests.peers.fake_dicomweb import FakeDicomWeb


@pytest.fixture
def padding_service() -> Iterator[FakeDicomWeb]:
    service = FakeDicomWeb(pad_qido=PAGE_SIZE).start()
    try:
        yield service
    finally:
        service.stop()


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call``'s result (or its error, raised here), failing if it takes longer."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(("value", call()))
        except Exception as exc:  # noqa: BLE001 (raised again below)
            outcome.append(("error", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still paging after {seconds:g} s"
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value


def test_a_search_of_a_service_that_ignores_offset_is_refused_naming_why(
    padding_service: FakeDicomWeb,
) -> None:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    with (
        open_client(WebService(padding_service.url), WebTimeouts()) as web,
        pytest.raises(DicomWebResponseError, match="ignores offset"),
    ):
        within(30, lambda: qido.search(web, identifier, Root.STUDY))
    assert padding_service.searches == 2


def test_a_stored_check_against_padded_answers_asks_a_bounded_number_of_times(
    padding_service: FakeDicomWeb, corpus: Corpus
) -> None:
    instances = corpus.instances[:3]
    padding_service.stored = {i.sop_uid: (i.study_uid, i.series_uid) for i in instances}
    never_sent = (instances[0].study_uid, instances[0].series_uid, "1.2.826.0.1.3680043.10.9.1")
    sent = [(i.study_uid, i.series_uid, i.sop_uid) for i in instances]
    with open_client(WebService(padding_service.url), WebTimeouts()) as web:
        held = within(30, lambda: stow.held_at(web, [*sent, never_sent]))
    assert held == {i.sop_uid for i in instances}
    studies = {i.study_uid for i in instances}
    assert padding_service.searches <= 2 * len(studies)


def test_a_stored_check_pages_through_a_study_when_the_uid_list_is_ignored() -> None:
    """The service answers the whole study whatever UIDs are asked for: the
    ones sent are still found, on whichever page they are."""
    study, series = "1.2.826.0.1.3680043.10.9.2", "1.2.826.0.1.3680043.10.9.2.1"
    held = {f"{series}.{n}": (study, series) for n in range(1, PAGE_SIZE + 120)}
    service = FakeDicomWeb(stored=held, ignore_uid_filter=True).start()
    try:
        sent = sorted(held)[-3:]  # past the first page
        with open_client(WebService(service.url), WebTimeouts()) as web:
            found = within(30, lambda: stow.held_at(web, [(study, series, s) for s in sent]))
        assert found == set(sent)
        assert service.searches == 2
    finally:
        service.stop()


def test_an_instance_search_keeps_only_the_patient_and_study_asked_for(corpus: Corpus) -> None:
    """A search that ignores its filters names another patient's and another
    study's instances too: only those of the keys asked for are expected."""
    patients = sorted(corpus.patients().items())
    (patient, mine), (_, theirs) = patients[0], patients[1]
    study = mine[0].study_uid
    other_study = next(i for i in mine if i.study_uid != study)
    source = FakeDicomWeb(
        served=[i.path.read_bytes() for i in mine if i.study_uid == study],
        foreign=[theirs[0].path.read_bytes(), other_study.path.read_bytes()],
    ).start()
    try:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "PATIENT"
        identifier.PatientID = patient
        with open_client(WebService(source.url), WebTimeouts()) as web:
            by_patient = qido.instances_of(web, identifier, Root.PATIENT)
            identifier.QueryRetrieveLevel = "STUDY"
            identifier.StudyInstanceUID = study
            by_study = qido.instances_of(web, identifier, Root.PATIENT)
    finally:
        source.stop()
    assert {r.sop_instance_uid for r in by_patient} == {
        i.sop_uid for i in mine if i.study_uid == study
    } | {other_study.sop_uid}
    assert {r.sop_instance_uid for r in by_study} == {
        i.sop_uid for i in mine if i.study_uid == study
    }
