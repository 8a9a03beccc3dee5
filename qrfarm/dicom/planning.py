"""What a retrieve will bring, found out with C-FINDs before it runs.

* :func:`expected_instances`: every instance a retrieve identifier names
  (IMAGE-level finds, one per series), the "expected" of reconciliation;
* :func:`expected_sop_classes`: the storage SOP classes a C-GET must propose
  when its association is opened: the study's SOPClassesInStudy when the PACS
  returns it, otherwise the SOPClassUID of every expected instance.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from qrfarm.errors import QueryBudgetSpent

from .connection import Connection
from .identifiers import build_query_identifier
from .model import UNIQUE_KEY, Level, Root, path_to

# Bound the walk for SOP classes: a patient with thousands of series is
# better served by the default set than by thousands of queries first.
MAX_QUERIES = 200


@dataclass(frozen=True)
class ImageRef:
    """One instance an IMAGE-level find answered with."""

    sop_instance_uid: str
    sop_class_uid: str | None
    study_instance_uid: str
    series_instance_uid: str


class _Walk:
    """Finds down the hierarchy from a retrieve's level, counting its queries."""

    def __init__(self, conn: Connection, root: Root, max_queries: int | None) -> None:
        self.conn = conn
        self.root = root
        self.left = max_queries

    def find(self, level: Level, keys: dict[str, str], returned: list[str]) -> list[Dataset]:
        """The matches of one find; LookupError when the PACS answers with a failure."""
        if self.left is not None:
            if self.left <= 0:
                raise QueryBudgetSpent
            self.left -= 1
        query = build_query_identifier(self.root, level, keys, returned, default_return_keys=False)
        result = self.conn.find(query, self.root)
        if not result.ok:
            raise LookupError(f"{level.value}-level find answered {result.final.summary()}")
        return result.matches

    def images(self, level: Level, keys: dict[str, str], found: dict[str, ImageRef]) -> None:
        if level in (Level.SERIES, Level.IMAGE):
            # One IMAGE-level find per series (or per instance asked for).
            for match in self.find(Level.IMAGE, keys, ["SOPInstanceUID", "SOPClassUID"]):
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
        for match in self.find(below, keys, [key]):
            child = match.get(key)
            if child:
                self.images(below, {**keys, key: str(child)}, found)


def _starting_keys(identifier: Dataset, root: Root) -> tuple[Level, list[dict[str, str]]]:
    """The retrieve's level, and the unique keys of each entity it names (one per UID)."""
    level = Level(str(identifier.QueryRetrieveLevel))
    fixed = {
        UNIQUE_KEY[lv]: str(identifier[UNIQUE_KEY[lv]].value)
        for lv in path_to(root, level)
        if lv is not level
    }
    own_key = UNIQUE_KEY[level]
    element = identifier[own_key]
    values = list(element.value) if element.VM > 1 else [str(element.value)]
    return level, [{**fixed, own_key: str(value)} for value in values]


def expected_instances(conn: Connection, identifier: Dataset, root: Root) -> list[ImageRef]:
    """Every instance a retrieve identifier names, by IMAGE-level finds down the hierarchy.

    Raises LookupError when the PACS answers a find with a failure, so the
    caller never takes a partial list for the whole.
    """
    walk = _Walk(conn, root, None)
    level, starts = _starting_keys(identifier, root)
    found: dict[str, ImageRef] = {}
    for keys in starts:
        walk.images(level, keys, found)
    return list(found.values())


def expected_sop_classes(conn: Connection, identifier: Dataset, root: Root) -> list[str]:
    """The SOP classes of the instances ``identifier`` would retrieve.

    Empty when the PACS does not tell (dcmqrscp returns neither
    SOPClassesInStudy nor SOPClassUID), when a find fails, or past
    MAX_QUERIES: a partial list would make the C-GET refuse the instances
    left out, so the caller then proposes its default set.
    """
    walk = _Walk(conn, root, MAX_QUERIES)
    level, starts = _starting_keys(identifier, root)
    found: dict[str, None] = {}
    try:
        for keys in starts:
            classes = _classes_in_study(walk, keys) if level is Level.STUDY else []
            if not classes:
                refs: dict[str, ImageRef] = {}
                walk.images(level, keys, refs)
                if any(r.sop_class_uid is None for r in refs.values()):
                    return []
                classes = [str(r.sop_class_uid) for r in refs.values()]
            found.update(dict.fromkeys(classes))
    except (QueryBudgetSpent, LookupError):
        return []
    return list(found)


def _classes_in_study(walk: _Walk, keys: dict[str, str]) -> list[str]:
    classes: list[str] = []
    for match in walk.find(Level.STUDY, keys, ["SOPClassesInStudy"]):
        value = match.get("SOPClassesInStudy")
        if isinstance(value, (list, tuple, MultiValue)):
            classes += [str(u) for u in value]
        elif value:
            classes.append(str(value))
    return classes
