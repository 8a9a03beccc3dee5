"""C-GET and C-MOVE against Orthanc and dcmqrscp: every instance, counts, bytes."""

from __future__ import annotations

import pytest

from qrfarm.dicom import (
    DEFAULT_STORAGE_SOP_CLASSES,
    Connection,
    Level,
    MemorySink,
    Operation,
    Root,
    StatusCategory,
    build_query_identifier,
    build_retrieve_identifier,
    qr_contexts,
    storage_contexts,
)
from qrfarm.dicom.planning import expected_sop_classes
from qrfarm.errors import DimseFailure, MoveDestinationUnknown
from qrfarm.sandbox.synthetic import Corpus
from tests.conftest import MOVE_DEST_AE, UNKNOWN_DEST_AE
from tests.peers import PacsPeer, dataset_bytes
from tests.peers.dcmtk import StoreScp

from .helpers import node_of


def _get_contexts(corpus: Corpus, root: Root = Root.STUDY) -> list:  # type: ignore[type-arg]
    classes = sorted({i.sop_class_uid for i in corpus.instances})
    return qr_contexts([Operation.GET], [root]) + storage_contexts(classes)


def _assert_bytes_equal(pacs: PacsPeer, sink: MemorySink, uids: set[str]) -> None:
    assert set(sink.datasets) == uids
    for uid in uids:
        assert sink.datasets[uid] == dataset_bytes(pacs.stored_bytes(uid)), uid


def test_get_of_a_series_brings_every_instance_byte_equal(pacs: PacsPeer, corpus: Corpus) -> None:
    series_uid = max(corpus.series(), key=lambda s: len(corpus.series()[s]))
    instances = corpus.series()[series_uid]
    identifier = build_retrieve_identifier(
        Root.STUDY,
        Level.SERIES,
        {"StudyInstanceUID": instances[0].study_uid, "SeriesInstanceUID": series_uid},
    )
    sink = MemorySink()
    with Connection.open(node_of(pacs), _get_contexts(corpus)) as conn:
        result = conn.get(identifier, store=sink)
    assert result.ok, result.final.summary()
    assert result.final.completed == len(instances)
    assert result.final.failed == 0 and result.final.warning == 0
    assert len(result.instances) == len(instances)
    assert all(i.status == 0 for i in result.instances)
    _assert_bytes_equal(pacs, sink, {i.sop_uid for i in instances})


@pytest.mark.parametrize("root", [Root.STUDY, Root.PATIENT])
def test_get_of_a_study_of_many_sop_classes(pacs: PacsPeer, corpus: Corpus, root: Root) -> None:
    # The study with the most SOP classes: images, multi-frame, SR, PDF.
    study_uid = max(
        corpus.studies(), key=lambda s: len({i.sop_class_uid for i in corpus.studies()[s]})
    )
    instances = corpus.studies()[study_uid]
    keys = {"StudyInstanceUID": study_uid}
    if root is Root.PATIENT:
        keys = {"PatientID": instances[0].patient_id, **keys}
    identifier = build_retrieve_identifier(root, Level.STUDY, keys)
    with Connection.open(node_of(pacs), qr_contexts([Operation.FIND], [root])) as conn:
        classes = expected_sop_classes(conn, identifier, root)
    if pacs.name == "dcmqrscp":
        # It returns neither SOPClassesInStudy nor SOPClassUID: the default set is used.
        assert classes == []
        classes = list(DEFAULT_STORAGE_SOP_CLASSES)
    else:
        assert set(classes) == {i.sop_class_uid for i in instances}
    contexts = qr_contexts([Operation.GET], [root]) + storage_contexts(classes)
    sink = MemorySink()
    with Connection.open(node_of(pacs), contexts) as conn:
        result = conn.get(identifier, root, store=sink)
    assert result.ok, result.final.summary()
    assert result.final.completed == len(instances)
    _assert_bytes_equal(pacs, sink, {i.sop_uid for i in instances})


def test_get_of_the_large_study_reports_progress(pacs: PacsPeer, corpus: Corpus) -> None:
    instances = corpus.studies()[corpus.large_study_uid]
    identifier = build_retrieve_identifier(
        Root.STUDY, Level.STUDY, {"StudyInstanceUID": corpus.large_study_uid}
    )
    sink = MemorySink()
    with Connection.open(node_of(pacs), _get_contexts(corpus)) as conn:
        result = conn.get(identifier, store=sink)
    assert result.ok
    assert result.final.completed == len(instances) == len(sink.datasets)
    pending = [r for r in result.responses if r.category is StatusCategory.PENDING]
    assert pending, "a few hundred instances come with pending responses"
    assert pending[-1].remaining is not None and pending[-1].remaining <= 1


def test_move_of_a_study_to_storescp(pacs: PacsPeer, corpus: Corpus, storescp: StoreScp) -> None:
    study_uid = corpus.large_study_uid
    instances = corpus.studies()[study_uid]
    identifier = build_retrieve_identifier(Root.STUDY, Level.STUDY, {"StudyInstanceUID": study_uid})
    with Connection.open(node_of(pacs), qr_contexts([Operation.MOVE])) as conn:
        result = conn.move(identifier, MOVE_DEST_AE, message_id=4711)
    assert result.ok, result.final.summary()
    assert result.message_id == 4711
    arrived = storescp.received_sop_uids()
    assert result.final.completed == len(arrived) == len(instances)
    assert set(arrived) == {i.sop_uid for i in instances}
    assert result.final.failed == 0


def test_find_then_move_then_get_on_one_association(
    pacs: PacsPeer, corpus: Corpus, storescp: StoreScp
) -> None:
    contexts = qr_contexts([Operation.FIND, Operation.MOVE, Operation.GET]) + storage_contexts(
        sorted({i.sop_class_uid for i in corpus.instances})
    )
    with Connection.open(node_of(pacs), contexts) as conn:
        found = conn.find(build_query_identifier(Root.STUDY, Level.STUDY, {"PatientID": "P001"}))
        study_uid = str(found.matches[0].StudyInstanceUID)
        expected = {i.sop_uid for i in corpus.studies()[study_uid]}
        identifier = build_retrieve_identifier(
            Root.STUDY, Level.STUDY, {"StudyInstanceUID": study_uid}
        )
        moved = conn.move(identifier, MOVE_DEST_AE)
        sink = MemorySink()
        got = conn.get(identifier, store=sink)
        assert conn.is_open
    assert found.ok and moved.ok and got.ok
    assert [found.message_id, moved.message_id, got.message_id] == [1, 2, 3]
    assert moved.final.completed == len(expected) == got.final.completed
    assert set(storescp.received_sop_uids()) == expected == set(sink.datasets)


def test_move_to_an_unknown_destination_fails_with_the_peers_status(
    pacs: PacsPeer, corpus: Corpus
) -> None:
    identifier = build_retrieve_identifier(
        Root.STUDY, Level.STUDY, {"StudyInstanceUID": corpus.large_study_uid}
    )
    with Connection.open(node_of(pacs), qr_contexts([Operation.MOVE])) as conn:
        result = conn.move(identifier, UNKNOWN_DEST_AE)
        assert conn.is_open  # a failure status is an answer, not a broken association
    assert result.final.category is StatusCategory.FAILURE
    with pytest.raises(DimseFailure) as info:
        result.raise_for_status()
    # dcmqrscp says so in the standard's words; Orthanc answers Unable to Process.
    if result.final.status == 0xA801:
        assert isinstance(info.value, MoveDestinationUnknown)
        assert "Move destination unknown" in str(info.value)
    else:
        assert f"0x{result.final.status:04X}" in str(info.value)


def test_identifier_the_pacs_rejects_is_a_failure_status(pacs: PacsPeer) -> None:
    # Sent unvalidated, as a caller may ask: a level this root does not have.
    raw = build_query_identifier(Root.STUDY, Level.STUDY)
    raw.QueryRetrieveLevel = "FRAME"
    with Connection.open(node_of(pacs), qr_contexts([Operation.FIND])) as conn:
        result = conn.find(raw, validate=False)
        assert conn.is_open
    assert result.final.category is StatusCategory.FAILURE
    assert not result.matches
    with pytest.raises(DimseFailure):
        result.raise_for_status()


def test_expected_instances_of_a_study_are_every_instance(pacs: PacsPeer, corpus: Corpus) -> None:
    from qrfarm.dicom.planning import expected_instances

    study_uid = corpus.large_study_uid
    identifier = build_retrieve_identifier(Root.STUDY, Level.STUDY, {"StudyInstanceUID": study_uid})
    with Connection.open(node_of(pacs), qr_contexts([Operation.FIND])) as conn:
        refs = expected_instances(conn, identifier, Root.STUDY)
        finds = conn._next_message_id - 1
    instances = corpus.studies()[study_uid]
    assert {r.sop_instance_uid for r in refs} == {i.sop_uid for i in instances}
    assert {(r.study_instance_uid, r.series_instance_uid) for r in refs} == {
        (i.study_uid, i.series_uid) for i in instances
    }
    # One SERIES-level find, then one IMAGE-level find per series.
    assert finds == 1 + len({i.series_uid for i in instances})
