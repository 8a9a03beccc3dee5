"""QIDO-RS: a C-FIND identifier asked of a DICOMweb service, answered as C-FIND answers.

The identifier is the one a C-FIND job sends (validated the same way): its
keys with a value are matching keys, those without are return keys
(``includefield``). Each answer keeps the keys the identifier asked for
(an absent one returned empty, as a C-FIND SCP returns every key asked
for), the Query/Retrieve Level, and the Specific Character Set the service
names (DICOM JSON is Unicode): so a QIDO-RS job stores what a C-FIND job
on the same archive stores.

QIDO-RS has no PATIENT level: such a query is refused, naming the rule.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from qrfarm.dicom.identifiers import (
    is_valid_uid,
    validate_query_identifier,
    validate_retrieve_identifier,
)
from qrfarm.dicom.model import UNIQUE_KEY, Level, Root, path_to
from qrfarm.dicom.planning import ImageRef
from qrfarm.errors import DicomWebResponseError, InvalidIdentifier

from .service import WebClient, http_error

log = logging.getLogger(__name__)

# Answers asked for per request (limit, offset): a service that caps its
# answers (Orthanc: QidoCaseSensitive aside, "QueryLimit") pages them.
PAGE_SIZE = 500
# Never kept from a QIDO answer (they describe the answer, not the entity).
_ALWAYS = ("QueryRetrieveLevel", "SpecificCharacterSet")


@dataclass(frozen=True)
class QidoQuery:
    level: Level
    filters: dict[str, str]
    fields: list[str]
    asked: list[int]  # the tags an answer keeps


def query_of(identifier: Dataset, root: Root) -> QidoQuery:
    """The QIDO-RS search a C-FIND identifier stands for; InvalidIdentifier if none does."""
    level = validate_query_identifier(identifier, root)
    if level is Level.PATIENT:
        raise InvalidIdentifier(
            "QueryRetrieveLevel",
            "QIDO-RS (DICOMweb) has no PATIENT level: query at STUDY level with the patient keys",
        )
    filters: dict[str, str] = {}
    fields: list[str] = []
    asked: list[int] = []
    for element in identifier:
        # A tag without a keyword (private, retired) is sent by its number.
        keyword = element.keyword or f"{element.tag:08X}"
        if keyword in _ALWAYS:
            continue
        asked.append(int(element.tag))
        name = keyword
        if element.VR == "SQ":
            raise InvalidIdentifier(keyword, "sequence matching is not sent over QIDO-RS")
        value = _text(element)
        if value:
            filters[name] = value
        else:
            fields.append(name)
    return QidoQuery(level, filters, fields, asked)


def _text(element: DataElement) -> str:
    """A matching value as QIDO-RS writes it: several UIDs with commas."""
    value = element.value
    if value is None or value == "":
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return ",".join(str(v) for v in value)
    return str(value)


def search(web: WebClient, identifier: Dataset, root: Root) -> list[Dataset]:
    """Every answer of the QIDO-RS search ``identifier`` stands for, as C-FIND
    answers; DicomWebError when the service cannot be asked."""
    query = query_of(identifier, root)
    return [_as_find_answer(raw, query) for raw in _pages(web, query)]


def _pages(web: WebClient, query: QidoQuery) -> Iterator[dict[str, Any]]:
    """Every answer, a page of PAGE_SIZE at a time. A service that ignores
    offset sends the same entities again: a full page naming no entity not
    seen before (by the level's unique UID) ends the search as a
    DicomWebResponseError, where paging on would never end."""
    offset = 0
    unique_tag = _UNIQUE_TAGS[query.level]
    seen: set[str] = set()
    while True:
        kwargs: dict[str, Any] = {
            "limit": PAGE_SIZE,
            "offset": offset,
            "fields": query.fields or None,
            "search_filters": query.filters,
        }
        try:
            if query.level is Level.STUDY:
                page = web.client.search_for_studies(**kwargs)
            elif query.level is Level.SERIES:
                page = web.client.search_for_series(**kwargs)
            else:
                page = web.client.search_for_instances(**kwargs)
        except Exception as exc:
            raise http_error(exc, f"QIDO-RS {query.level.value.lower()} search") from exc
        if not isinstance(page, list):
            raise DicomWebResponseError("QIDO-RS answered something other than a JSON array")
        # Fewer than asked: the last page. More than asked: the service
        # ignores limit and sent everything at once.
        if len(page) == PAGE_SIZE:
            before = len(seen)
            seen |= {_first(raw, unique_tag) for raw in page if isinstance(raw, dict)}
            if len(seen) == before:
                raise DicomWebResponseError(
                    f"QIDO-RS answered offset {offset} with entities it had sent already: "
                    "the service ignores offset, and its answers cannot be paged"
                )
        yield from page
        if len(page) != PAGE_SIZE:
            return
        offset += PAGE_SIZE


def _as_find_answer(raw: object, query: QidoQuery) -> Dataset:
    if not isinstance(raw, dict):
        raise DicomWebResponseError("a QIDO-RS answer is not a DICOM JSON object")
    try:
        full = Dataset.from_json(raw)
    except (ValueError, TypeError, KeyError) as exc:
        raise DicomWebResponseError(
            f"a QIDO-RS answer is not DICOM JSON ({type(exc).__name__})"
        ) from exc
    answer = Dataset()
    if "SpecificCharacterSet" in full:
        answer.SpecificCharacterSet = full.SpecificCharacterSet
    answer.QueryRetrieveLevel = query.level.value
    for tag in query.asked:
        if tag in full:
            answer[tag] = full[tag]
        else:
            answer.add_new(tag, _vr_of(tag), None)
    return answer


def _vr_of(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def instances_of(web: WebClient, identifier: Dataset, root: Root) -> list[ImageRef]:
    """Every instance a retrieve identifier names, by one IMAGE-level QIDO-RS
    search on its unique keys: the expected instances of a WADO-RS retrieve.

    An answer outside those keys (a service that ignores a filter) is left
    out: it is not what the job asked for, and is neither expected nor
    retrieved."""
    level = validate_retrieve_identifier(identifier, root)
    filters: dict[str, str] = {}
    for step in path_to(root, level):
        keyword = UNIQUE_KEY[step]
        filters[keyword] = _text(identifier[keyword])
    wanted = {
        _REF_KEYS[keyword]: set(value.split(","))
        for keyword, value in filters.items()
        if keyword in _REF_KEYS
    }
    fields = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"]
    if "PatientID" in filters:
        fields.append("PatientID")  # returned, to be held against the one asked for
    query = QidoQuery(Level.IMAGE, filters, fields, [])
    found: dict[str, ImageRef] = {}
    outside = 0
    for raw in _pages(web, query):
        if not isinstance(raw, dict):
            raise DicomWebResponseError("a QIDO-RS answer is not a DICOM JSON object")
        uids = {key: _first(raw, tag) for key, tag in _REF_TAGS.items()}
        if not all(is_valid_uid(uids[k]) for k in ("sop", "study", "series")):
            raise DicomWebResponseError("a QIDO-RS instance answer lacks a valid UID")
        # A service that does not return the patient's ID at this level is
        # taken at its filter; one naming another patient is not.
        if any(
            uids[key] not in values and (key != "patient" or uids[key])
            for key, values in wanted.items()
        ):
            outside += 1
            continue
        found[uids["sop"]] = ImageRef(
            uids["sop"], uids["class"] or None, uids["study"], uids["series"]
        )
    if outside:
        log.warning("QIDO-RS answered %d instance(s) outside the keys asked for: left out", outside)
    return list(found.values())


# Each level's unique key, as a DICOM JSON tag.
_UNIQUE_TAGS = {
    Level.PATIENT: "00100020",
    Level.STUDY: "0020000D",
    Level.SERIES: "0020000E",
    Level.IMAGE: "00080018",
}
_REF_TAGS = {
    "sop": "00080018",
    "class": "00080016",
    "study": "0020000D",
    "series": "0020000E",
    "patient": "00100020",  # returned only when asked for (a patient-level retrieve)
}
# The unique keys an answer is held against (the patient's is asked back).
_REF_KEYS = {
    "PatientID": "patient",
    "StudyInstanceUID": "study",
    "SeriesInstanceUID": "series",
    "SOPInstanceUID": "sop",
}


def _first(raw: dict[str, Any], tag: str) -> str:
    element = raw.get(tag)
    if not isinstance(element, dict):
        return ""
    values = element.get("Value")
    if not isinstance(values, list) or not values:
        return ""
    return str(values[0])
