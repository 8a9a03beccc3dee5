"""STOW-RS to Orthanc with its DICOMweb plugin: what its answer says of each
instance sent, and the QIDO-RS check of what it holds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from qrfarm.dicomweb import WebClient, WebService, WebTimeouts, open_client, stow
from qrfarm.sandbox.synthetic import Corpus
from tests.peers.dicomweb import dicomweb_url, start_dicomweb_orthanc


@pytest.fixture(scope="module")
def destination(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebClient]:
    """An empty Orthanc with the DICOMweb plugin, as a STOW-RS destination."""
    peer = start_dicomweb_orthanc(tmp_path_factory.mktemp("stow-destination"), "STOWDEST")
    try:
        with open_client(WebService(dicomweb_url(peer)), WebTimeouts()) as web:
            yield web
    finally:
        peer.stop()


def test_every_instance_stored_is_named_in_the_answer_and_found_by_qido(
    destination: WebClient, corpus: Corpus
) -> None:
    study, instances = sorted((s, i) for s, i in corpus.studies().items() if 3 <= len(i) <= 8)[0]
    answer = stow.store(destination, [i.path for i in instances], study=study)
    assert answer.stored == {i.sop_uid for i in instances}
    assert answer.failed == {} and answer.warnings == {}
    sent = [(i.study_uid, i.series_uid, i.sop_uid) for i in instances]
    never_sent = (study, instances[0].series_uid, "1.2.826.0.1.3680043.10.1234.99.1")
    assert stow.held_at(destination, [*sent, never_sent]) == {i.sop_uid for i in instances}


def test_an_instance_the_service_refuses_is_named_failed_and_not_confirmed(
    destination: WebClient, corpus: Corpus
) -> None:
    (study, instances), (_, others) = sorted(
        (s, i) for s, i in corpus.studies().items() if 3 <= len(i) <= 8
    )[1:3]
    stray = others[0]  # of another study: refused under /studies/{study}
    answer = stow.store(destination, [i.path for i in instances] + [stray.path], study=study)
    assert answer.stored == {i.sop_uid for i in instances}
    assert answer.failed == {stray.sop_uid: 0x0110}  # processing failure
    confirmed = stow.held_at(
        destination,
        [(i.study_uid, i.series_uid, i.sop_uid) for i in [*instances, stray]],
    )
    assert stray.sop_uid not in confirmed
    assert confirmed == {i.sop_uid for i in instances}
