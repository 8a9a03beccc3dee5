"""Helpers shared by the protocol-layer tests against real peers."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from qrfarm.dicom import Node
from tests.peers import PacsPeer

CONTROL = {"QueryRetrieveLevel", "SpecificCharacterSet"}


def node_of(peer: PacsPeer, ae_title: str | None = None) -> Node:
    return Node(ae_title or peer.ae_title, peer.host, peer.port)


def findscu_keys(identifier: Dataset) -> list[str]:
    """The same identifier as findscu ``-k`` arguments (level set by findscu's helper)."""
    keys: list[str] = []
    for element in identifier:
        if element.keyword == "QueryRetrieveLevel":
            continue
        value = _text(element.value)
        keys.append(f"{element.keyword}={value}" if value else element.keyword)
    return keys


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def answer_set(answers: list[Dataset], identifier: Dataset) -> set[tuple[tuple[str, str], ...]]:
    """Answers as comparable rows: every asked key's value, names decoded.

    A key left out of an answer and a key returned empty count as the same.
    """
    keywords = [e.keyword for e in identifier if e.keyword not in CONTROL]
    rows = set()
    for answer in answers:
        rows.add(tuple((k, _text(answer.get(k))) for k in keywords))
    return rows
