"""The harness itself: both PACS come up loaded, answer like the corpus, move and store."""

from __future__ import annotations

import ssl
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from qrfarm.sandbox.synthetic import Corpus
from tests.conftest import CALLING_AE, MOVE_DEST_AE, UNKNOWN_DEST_AE
from tests.peers import LOCALHOST, PacsPeer, dataset_bytes, require_peer
from tests.peers.dcmtk import (
    ECHOSCU,
    STORESCP,
    STORESCU,
    StoreScp,
    echoscu,
    findscu,
    make_tls_certificate,
    storescp_has_tls,
    storescu,
)
from tests.peers.ports import accepts_connections, free_port

SUCCESS = 0x0000
# pynetdicom.sop_class names are generated at run time, unseen by mypy.
STUDY_ROOT_MOVE = UID("1.2.840.10008.5.1.4.1.2.2.2")


def _move(peer: PacsPeer, identifier: Dataset, destination: str) -> Dataset:
    """C-MOVE with pynetdicom; returns the final response's status data set."""
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(STUDY_ROOT_MOVE)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    assert assoc.is_established
    final = Dataset()
    try:
        for status, _identifier in assoc.send_c_move(
            identifier, destination, STUDY_ROOT_MOVE, msg_id=4711
        ):
            final = status
    finally:
        assoc.release()
    return final


def _series_identifier(corpus: Corpus, series_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = corpus.series()[series_uid][0].study_uid
    ds.SeriesInstanceUID = series_uid
    return ds


def test_pacs_listens(pacs: PacsPeer) -> None:
    assert accepts_connections(pacs.port, pacs.host)


def test_study_level_find_returns_the_corpus_studies(pacs: PacsPeer, corpus: Corpus) -> None:
    answers = findscu(pacs, "study", "STUDY", ["StudyInstanceUID", "StudyDate", "PatientID"])
    assert {str(a.StudyInstanceUID) for a in answers} == set(corpus.studies())


def test_patient_level_find_returns_the_corpus_patients(pacs: PacsPeer, corpus: Corpus) -> None:
    answers = findscu(pacs, "patient", "PATIENT", ["PatientID", "PatientName"])
    assert {str(a.PatientID) for a in answers} == set(corpus.patients())
    names = {str(a.PatientID): str(a.PatientName) for a in answers}
    assert names == {pid: inst[0].patient_name for pid, inst in corpus.patients().items()}


def test_date_range_find(pacs: PacsPeer, corpus: Corpus) -> None:
    answers = findscu(pacs, "study", "STUDY", ["StudyDate=20150101-20191231", "StudyInstanceUID"])
    expected = {
        uid
        for uid, inst in corpus.studies().items()
        if "20150101" <= inst[0].study_date <= "20191231"
    }
    assert 1 < len(expected) < len(corpus.studies())
    assert {str(a.StudyInstanceUID) for a in answers} == expected


def test_stored_bytes_equal_the_corpus(pacs: PacsPeer, corpus: Corpus) -> None:
    # One instance of each SOP class: images, multi-frame, PDF and SR.
    samples = {i.sop_class_uid: i for i in corpus.instances}
    assert len(samples) >= 5
    for instance in samples.values():
        original = instance.path.read_bytes()
        stored = pacs.stored_bytes(instance.sop_uid)
        assert dataset_bytes(stored) == dataset_bytes(original), instance.sop_class_uid
        assert dcmread(instance.path) == dcmread(BytesIO(stored))


def test_move_to_storescp(pacs: PacsPeer, corpus: Corpus, storescp: StoreScp) -> None:
    series_uid, instances = next(iter(corpus.series().items()))
    final = _move(pacs, _series_identifier(corpus, series_uid), MOVE_DEST_AE)
    assert final.Status == SUCCESS
    assert final.NumberOfCompletedSuboperations == len(instances)
    assert storescp.received_sop_uids() == {i.sop_uid for i in instances}
    for path in storescp.received_files():
        original = corpus.by_sop_uid()[str(dcmread(path).SOPInstanceUID)].path
        assert dataset_bytes(path.read_bytes()) == dataset_bytes(original.read_bytes())


def test_move_to_unknown_destination_fails(pacs: PacsPeer, corpus: Corpus) -> None:
    series_uid = next(iter(corpus.series()))
    final = _move(pacs, _series_identifier(corpus, series_uid), UNKNOWN_DEST_AE)
    # Orthanc: 0xC000 (unable to process); dcmqrscp: 0xA801 (destination unknown).
    assert final.Status in (0xC000, 0xA801)


def test_called_ae_is_checked(pacs: PacsPeer) -> None:
    require_peer(ECHOSCU)
    assert echoscu(pacs.host, pacs.port, pacs.ae_title).returncode == 0
    # DCMTK's echoscu, not pynetdicom: pynetdicom can report a fast rejection as an abort.
    wrong = echoscu(pacs.host, pacs.port, "NOT_THE_PACS")
    assert wrong.returncode != 0
    assert "Association Rejected" in wrong.stderr
    assert "Called AE Title Not Recognized" in wrong.stderr


def test_storescp_over_tls(tmp_path: Path, corpus: Corpus) -> None:
    require_peer(STORESCP)
    require_peer(STORESCU)
    if not storescp_has_tls():
        pytest.skip("this DCMTK storescp is built without TLS")
    key, cert = make_tls_certificate(tmp_path / "tls")
    first, second = corpus.instances[0], corpus.instances[1]
    with StoreScp("TLSSCP", free_port(), tmp_path / "received", tls=(key, cert)) as scp:
        storescu(LOCALHOST, scp.port, "TLSSCP", [first.path], tls_ca=cert)
        # pynetdicom over the same TLS: the way qrfarm itself would connect.
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        ae = AE(ae_title=CALLING_AE)
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate(LOCALHOST, scp.port, ae_title="TLSSCP", tls_args=(context, LOCALHOST))
        assert assoc.is_established
        status = assoc.send_c_store(dcmread(second.path))
        assoc.release()
        assert status.Status == SUCCESS
        assert scp.received_sop_uids() == {first.sop_uid, second.sop_uid}
