"""An in-memory index of DICOM files, answering C-FIND matching (PS3.4 C.2.2.2).

Enough of a PACS's query engine for a sandbox: single value, wildcard
(``*``, ``?``), range (dates and times), list of UIDs and universal
matching, on the attributes of each level, with the usual computed keys
(ModalitiesInStudy, SOPClassesInStudy, NumberOf...Related...).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from qrfarm.dicom import UNIQUE_KEY, Level

_COMPUTED = {
    "ModalitiesInStudy",
    "SOPClassesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "NumberOfSeriesRelatedInstances",
    "NumberOfPatientRelatedStudies",
    "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances",
}
_CONTROL = {"QueryRetrieveLevel", "SpecificCharacterSet", "QueryRetrieveView"}


@dataclass(frozen=True)
class ArchivedInstance:
    path: Path
    header: Dataset  # the file's data set without pixel data

    def key(self, level: Level) -> str:
        return str(self.header.get(UNIQUE_KEY[level], ""))


def _text(value: object) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        return [str(v) for v in value]
    return [str(value)]


def matches(instance: Dataset, keyword: str, wanted: object, vr: str) -> bool:
    """PS3.4 C.2.2.2 matching of one key against one instance."""
    patterns = _text(wanted)
    if not patterns or patterns == ["*"]:
        return True  # universal matching
    have = _text(instance.get(keyword))
    if vr == "UI":
        return any(v in patterns for v in have)
    pattern = patterns[0]
    if vr in {"DA", "TM", "DT"} and "-" in pattern:
        start, _, end = pattern.partition("-")
        # An end given coarser than the value ("10" for 10:30:00) covers all of it.
        return any(
            (not start or v >= start) and (not end or v <= end.ljust(len(v), "9")) for v in have
        )
    if "*" in pattern or "?" in pattern:
        fold = vr == "PN"  # person names match case-insensitively in most archives
        return any(
            fnmatch.fnmatchcase(v.lower() if fold else v, pattern.lower() if fold else pattern)
            for v in have
        )
    return pattern in have


class Archive:
    """The instances a sandbox PACS holds, indexed by their headers."""

    def __init__(self, files: Iterable[Path]) -> None:
        self.instances = [
            ArchivedInstance(path, dcmread(path, stop_before_pixels=True)) for path in files
        ]

    def select(self, identifier: Dataset, level: Level) -> list[list[ArchivedInstance]]:
        """The instances matching ``identifier``, grouped by entity of ``level``."""
        criteria = [
            e
            for e in identifier
            if e.keyword not in _CONTROL and e.keyword not in _COMPUTED and e.VR != "SQ"
        ]
        groups: dict[str, list[ArchivedInstance]] = {}
        for instance in self.instances:
            if all(matches(instance.header, e.keyword, e.value, e.VR) for e in criteria):
                groups.setdefault(instance.key(level), []).append(instance)
        return list(groups.values())

    def answer(self, identifier: Dataset, level: Level, group: list[ArchivedInstance]) -> Dataset:
        """The C-FIND response identifier for one matched entity."""
        first = group[0].header
        reply = Dataset()
        reply.QueryRetrieveLevel = level.value
        if "SpecificCharacterSet" in first:
            reply.SpecificCharacterSet = first.SpecificCharacterSet
        for element in identifier:
            keyword = element.keyword
            if keyword in _CONTROL:
                continue
            if keyword in _COMPUTED:
                setattr(reply, keyword, _computed(keyword, group))
            elif keyword in first:
                reply[element.tag] = first[element.tag]
            else:
                reply[element.tag] = element  # asked for, not held: returned empty
        return reply


def _computed(keyword: str, group: list[ArchivedInstance]) -> object:
    headers = [i.header for i in group]
    if keyword == "ModalitiesInStudy":
        return sorted({str(h.get("Modality", "")) for h in headers} - {""})
    if keyword == "SOPClassesInStudy":
        return sorted({str(h.SOPClassUID) for h in headers})
    if keyword.endswith("RelatedInstances"):
        return str(len(headers))
    if keyword.endswith("RelatedSeries"):
        return str(len({str(h.SeriesInstanceUID) for h in headers}))
    return str(len({str(h.StudyInstanceUID) for h in headers}))  # ...RelatedStudies
