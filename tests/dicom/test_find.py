"""C-FIND at every level of both roots, against Orthanc and dcmqrscp, equal to findscu."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from qrfarm.dicom import Connection, Level, Operation, Root, build_query_identifier, qr_contexts
from qrfarm.sandbox.synthetic import Corpus
from tests.peers import PacsPeer
from tests.peers.dcmtk import findscu

from .helpers import answer_set, findscu_keys, node_of

Keys = dict[str, str | list[str]]


def _first(corpus: Corpus, patient: str = "P001") -> tuple[str, str]:
    instance = corpus.patients()[patient][0]
    return instance.study_uid, instance.series_uid


CASES: dict[str, tuple[Root, Level, Callable[[Corpus], Keys]]] = {
    "study root STUDY, universal": (Root.STUDY, Level.STUDY, lambda c: {}),
    "study root STUDY, patient ID wildcard": (
        Root.STUDY,
        Level.STUDY,
        lambda c: {"PatientID": "P00*"},
    ),
    "study root STUDY, name wildcard": (Root.STUDY, Level.STUDY, lambda c: {"PatientName": "M*"}),
    "study root STUDY, date range": (
        Root.STUDY,
        Level.STUDY,
        lambda c: {"StudyDate": "20150101-20201231"},
    ),
    "study root STUDY, open date range": (
        Root.STUDY,
        Level.STUDY,
        lambda c: {"StudyDate": "20190101-"},
    ),
    "study root STUDY, UID list": (
        Root.STUDY,
        Level.STUDY,
        lambda c: {"StudyInstanceUID": sorted(c.studies())[:2]},
    ),
    "study root SERIES": (
        Root.STUDY,
        Level.SERIES,
        lambda c: {"StudyInstanceUID": c.large_study_uid},
    ),
    "study root SERIES, modality": (
        Root.STUDY,
        Level.SERIES,
        lambda c: {"StudyInstanceUID": _first(c)[0], "Modality": "CT"},
    ),
    "study root IMAGE": (
        Root.STUDY,
        Level.IMAGE,
        lambda c: {"StudyInstanceUID": _first(c)[0], "SeriesInstanceUID": _first(c)[1]},
    ),
    "study root IMAGE, UID list": (
        Root.STUDY,
        Level.IMAGE,
        lambda c: {
            "StudyInstanceUID": _first(c)[0],
            "SeriesInstanceUID": _first(c)[1],
            "SOPInstanceUID": [i.sop_uid for i in c.series()[_first(c)[1]][:2]],
        },
    ),
    "patient root PATIENT, universal": (Root.PATIENT, Level.PATIENT, lambda c: {}),
    "patient root PATIENT, wildcard": (
        Root.PATIENT,
        Level.PATIENT,
        lambda c: {"PatientID": "P00?"},
    ),
    "patient root STUDY": (Root.PATIENT, Level.STUDY, lambda c: {"PatientID": "P001"}),
    "patient root STUDY, date range": (
        Root.PATIENT,
        Level.STUDY,
        lambda c: {"PatientID": "P001", "StudyDate": "-20191231"},
    ),
    "patient root SERIES": (
        Root.PATIENT,
        Level.SERIES,
        lambda c: {"PatientID": "P001", "StudyInstanceUID": _first(c)[0]},
    ),
    "patient root IMAGE": (
        Root.PATIENT,
        Level.IMAGE,
        lambda c: {
            "PatientID": "P001",
            "StudyInstanceUID": _first(c)[0],
            "SeriesInstanceUID": _first(c)[1],
        },
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_find_answers_equal_findscu(pacs: PacsPeer, corpus: Corpus, case: str) -> None:
    root, level, keys = CASES[case]
    identifier = build_query_identifier(root, level, keys(corpus))
    with Connection.open(node_of(pacs), qr_contexts([Operation.FIND], [root])) as conn:
        result = conn.find(identifier, root)
    assert result.ok, result.final.summary()
    reference = findscu(pacs, root.value, level.value, findscu_keys(identifier))
    assert result.matches, "the case should match something in the corpus"
    assert len(result.matches) == len(reference)
    assert answer_set(result.matches, identifier) == answer_set(reference, identifier)


def test_study_level_find_returns_every_study_of_the_corpus(pacs: PacsPeer, corpus: Corpus) -> None:
    identifier = build_query_identifier(Root.STUDY, Level.STUDY)
    with Connection.open(node_of(pacs), qr_contexts([Operation.FIND])) as conn:
        result = conn.find(identifier)
    assert {str(m.StudyInstanceUID) for m in result.matches} == set(corpus.studies())


def test_names_are_decoded_with_their_character_set(pacs: PacsPeer, corpus: Corpus) -> None:
    identifier = build_query_identifier(Root.PATIENT, Level.PATIENT)
    with Connection.open(node_of(pacs), qr_contexts([Operation.FIND], [Root.PATIENT])) as conn:
        result = conn.find(identifier, Root.PATIENT)
    names = {str(m.PatientID): str(m.PatientName) for m in result.matches}
    expected = {pid: instances[0].patient_name for pid, instances in corpus.patients().items()}
    assert names == expected
    assert any(not name.isascii() for name in names.values())


def test_several_finds_on_one_association(pacs: PacsPeer, corpus: Corpus) -> None:
    with Connection.open(node_of(pacs), qr_contexts([Operation.FIND])) as conn:
        counts = [
            len(
                conn.find(
                    build_query_identifier(Root.STUDY, Level.STUDY, {"PatientID": pid})
                ).matches
            )
            for pid in sorted(corpus.patients())
        ]
        message_ids = conn._next_message_id
    assert sum(counts) == len(corpus.studies())
    assert message_ids == len(corpus.patients()) + 1


def test_back_to_back_finds_on_one_association_lose_no_answer(
    pacs: PacsPeer, corpus: Corpus
) -> None:
    # pynetdicom's reactor can take a response of the next request for itself
    # when that request follows the last final response too closely.
    from qrfarm.dicom import build_retrieve_identifier
    from qrfarm.dicom.planning import expected_instances

    study = corpus.large_study_uid
    identifier = build_retrieve_identifier(Root.STUDY, Level.STUDY, {"StudyInstanceUID": study})
    with Connection.open(node_of(pacs), qr_contexts([Operation.FIND])) as conn:
        counts = [len(expected_instances(conn, identifier, Root.STUDY)) for _ in range(15)]
    assert counts == [len(corpus.studies()[study])] * 15
