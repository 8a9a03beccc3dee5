"""A DICOMweb node's jobs run by a real worker process, like any node's: a
find through QIDO-RS and a retrieve through WADO-RS into the farm, taken from
the node's queue, completed and reconciled."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qrfarm.dicom import Level
from qrfarm.jobs.nodes import NodeSpec
from qrfarm.sandbox.synthetic import Corpus
from tests.peers import dataset_bytes
from tests.peers.dicomweb import dicomweb_url, start_dicomweb_orthanc
from tests.peers.orthanc import OrthancPeer
from tests.peers.ports import free_port

from .conftest import Farm, make_farm


@pytest.fixture(scope="module")
def web_pacs(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancPeer]:
    peer = start_dicomweb_orthanc(tmp_path_factory.mktemp("farm-dicomweb"), "WEBPACS")
    study = sorted(s for s, found in corpus.studies().items() if 3 <= len(found) <= 8)[0]
    try:
        peer.load(i.path for i in corpus.studies()[study])
        yield peer
    finally:
        peer.stop()


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[Farm]:
    with make_farm("embedded", tmp_path, free_port()) as farm:
        yield farm


def test_a_worker_runs_a_dicomweb_nodes_find_and_retrieve(
    farm: Farm, web_pacs: OrthancPeer, corpus: Corpus
) -> None:
    farm.register(
        NodeSpec(
            "web",
            "WEBPACS",
            "127.0.0.1",
            web_pacs.http_port,
            dicomweb_url=dicomweb_url(web_pacs),
            retrieve_transport="dicomweb",
        )
    )
    farm.start_worker("web")
    found = farm.wait(farm.client.find("web", Level.STUDY, {"PatientID": "*"}))
    assert found["state"] == "completed", found
    (answer,) = farm.client.results(found["id"])
    study = answer["0020000D"]["Value"][0]
    got = farm.wait(farm.client.get("web", Level.STUDY, {"StudyInstanceUID": study}))
    assert got["state"] == "completed", got
    instances = corpus.studies()[study]
    assert got["expected"] == got["recorded"] == len(instances)
    for row in farm.rows(got["id"]):
        held = (farm.settings.storage_root / row.file_path).read_bytes()
        assert dataset_bytes(held) == dataset_bytes(web_pacs.stored_bytes(row.sop_instance_uid))
