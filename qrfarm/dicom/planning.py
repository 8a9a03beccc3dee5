"""Which storage SOP classes a C-GET should propose, found out before it runs.

A C-GET can only receive the SOP classes it proposed as storage contexts
when the association was opened. So the classes are found first, on a
query association: the study's SOPClassesInStudy when the PACS returns it,
otherwise the SOPClassUID of every instance from IMAGE-level finds, walking
down the hierarchy from the retrieve level.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from .connection import Connection
from .identifiers import build_query_identifier
from .model import UNIQUE_KEY, Level, Root, path_to

# Bound the walk: a patient with thousands of series is better served by
# the default set than by thousands of queries before the retrieve.
MAX_QUERIES = 200


class _Unknown(Exception):
    """The PACS did not say the SOP class of some instance."""


def expected_sop_classes(conn: Connection, identifier: Dataset, root: Root) -> list[str]:
    """The SOP classes of the instances ``identifier`` would retrieve.

    Empty when the PACS does not tell (dcmqrscp returns neither
    SOPClassesInStudy nor SOPClassUID): a partial list would make the C-GET
    refuse the instances left out, so the caller then proposes its default set.
    """
    level = Level(str(identifier.QueryRetrieveLevel))
    fixed = {
        UNIQUE_KEY[lv]: str(identifier[UNIQUE_KEY[lv]].value)
        for lv in path_to(root, level)
        if lv is not level
    }
    own_key = UNIQUE_KEY[level]
    element = identifier[own_key]
    values = list(element.value) if element.VM > 1 else [str(element.value)]
    found: dict[str, None] = {}
    budget = [MAX_QUERIES]
    try:
        for value in values:
            _walk(conn, root, level, {**fixed, own_key: str(value)}, found, budget)
    except _Unknown:
        return []
    return list(found)


def _walk(
    conn: Connection,
    root: Root,
    level: Level,
    keys: dict[str, str],
    found: dict[str, None],
    budget: list[int],
) -> None:
    if budget[0] <= 0:
        raise _Unknown
    if level is Level.IMAGE:
        query = build_query_identifier(
            root, Level.IMAGE, keys, ["SOPClassUID"], default_return_keys=False
        )
        budget[0] -= 1
        for match in conn.find(query, root).matches:
            if not match.get("SOPClassUID"):
                raise _Unknown
            found[str(match.SOPClassUID)] = None
        return
    if level is Level.STUDY:
        above = {k: v for k, v in keys.items() if k != UNIQUE_KEY[Level.STUDY]}
        query = build_query_identifier(
            root,
            Level.STUDY,
            {**above, "StudyInstanceUID": keys["StudyInstanceUID"]},
            ["SOPClassesInStudy"],
            default_return_keys=False,
        )
        budget[0] -= 1
        classes = [
            str(u)
            for m in conn.find(query, root).matches
            for u in _multi(m.get("SOPClassesInStudy"))
        ]
        if classes:
            found.update(dict.fromkeys(classes))
            return
    below = {Level.PATIENT: Level.STUDY, Level.STUDY: Level.SERIES, Level.SERIES: Level.IMAGE}[
        level
    ]
    query = build_query_identifier(
        root, below, keys, [UNIQUE_KEY[below]], default_return_keys=False
    )
    budget[0] -= 1
    for match in conn.find(query, root).matches:
        child = match.get(UNIQUE_KEY[below])
        if child:
            _walk(conn, root, below, {**keys, UNIQUE_KEY[below]: str(child)}, found, budget)


def _multi(value: object) -> list[object]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        return list(value)
    return [value]


@dataclass(frozen=True)
class ImageRef:
    """One instance an IMAGE-level find answered with."""

    sop_instance_uid: str
    sop_class_uid: str | None
    study_instance_uid: str
    series_instance_uid: str


def expected_instances(conn: Connection, identifier: Dataset, root: Root) -> list[ImageRef]:
    """Every instance a retrieve identifier names, by IMAGE-level finds down the hierarchy.

    Raises LookupError when the PACS answers a find with a failure, so the
    caller never takes a partial list for the whole.
    """
    level = Level(str(identifier.QueryRetrieveLevel))
    fixed = {
        UNIQUE_KEY[lv]: str(identifier[UNIQUE_KEY[lv]].value)
        for lv in path_to(root, level)
        if lv is not level
    }
    own_key = UNIQUE_KEY[level]
    element = identifier[own_key]
    values = list(element.value) if element.VM > 1 else [str(element.value)]
    found: dict[str, ImageRef] = {}
    for value in values:
        _collect(conn, root, level, {**fixed, own_key: str(value)}, found)
    return list(found.values())


def _find(
    conn: Connection, root: Root, level: Level, keys: dict[str, str], returned: list[str]
) -> list[Dataset]:
    query = build_query_identifier(root, level, keys, returned, default_return_keys=False)
    result = conn.find(query, root)
    if not result.ok:
        raise LookupError(f"{level.value}-level find answered {result.final.summary()}")
    return result.matches


def _collect(
    conn: Connection, root: Root, level: Level, keys: dict[str, str], found: dict[str, ImageRef]
) -> None:
    if level in (Level.SERIES, Level.IMAGE):
        # One IMAGE-level find per series (or per instance asked for).
        for match in _find(conn, root, Level.IMAGE, keys, ["SOPInstanceUID", "SOPClassUID"]):
            uid = str(match.get("SOPInstanceUID") or "")
            if uid:
                found[uid] = ImageRef(
                    uid,
                    str(match.SOPClassUID) if match.get("SOPClassUID") else None,
                    keys["StudyInstanceUID"],
                    keys["SeriesInstanceUID"],
                )
        return
    below = Level.STUDY if level is Level.PATIENT else Level.SERIES
    key = UNIQUE_KEY[below]
    for match in _find(conn, root, below, keys, [key]):
        child = match.get(key)
        if child:
            _collect(conn, root, below, {**keys, key: str(child)}, found)
