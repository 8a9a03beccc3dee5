"""Building and validating Q/R identifiers before anything is sent.

Two kinds (PS3.4 C.4.1.2 and C.4.2.1.4):

* a retrieve identifier (C-GET, C-MOVE) holds Query/Retrieve Level and the
  unique keys from the root down to that level, nothing else but Specific
  Character Set and Query/Retrieve View; a list of UIDs is allowed only in
  the key of the level itself;
* a query identifier (C-FIND) holds the unique keys of the levels above (one
  value each), matching keys at the query level, and blank return keys.

Every refusal raises :class:`~qrfarm.errors.InvalidIdentifier` naming the
attribute and the rule it breaks.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping, Sequence

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

from qrfarm.errors import InvalidIdentifier

from .attribute_levels import level_of
from .model import UNIQUE_KEY, Level, Root, levels, path_to

# Attributes allowed in any identifier besides the keys themselves.
_CONTROL_KEYWORDS = {
    "QueryRetrieveLevel",
    "SpecificCharacterSet",
    "QueryRetrieveView",
    "TimezoneOffsetFromUTC",
}
_RETRIEVE_EXTRAS = {"SpecificCharacterSet", "QueryRetrieveView"}

_RANGE_VRS = {"DA", "TM", "DT"}
_DATE = re.compile(r"^\d{4}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])$")
_TIME = re.compile(r"^([01]\d|2[0-3])([0-5]\d([0-5]\d(\.\d{1,6})?)?)?$")
_DATETIME = re.compile(r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?$")
_TAG_TEXT = re.compile(r"^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$")

# The return keys a query object asks for at each level when the caller
# gives none (what a viewer shows in its study browser).
DEFAULT_RETURN_KEYS: dict[Level, list[str]] = {
    Level.PATIENT: [
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "NumberOfPatientRelatedStudies",
    ],
    Level.STUDY: [
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyID",
        "StudyDescription",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ],
    Level.SERIES: [
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "NumberOfSeriesRelatedInstances",
    ],
    Level.IMAGE: ["SOPInstanceUID", "SOPClassUID", "InstanceNumber"],
}
# Patient attributes a study-root STUDY query asks for as well.
_STUDY_ROOT_PATIENT_KEYS = ["PatientName", "PatientID", "PatientBirthDate", "PatientSex"]

KeyValue = str | Sequence[str] | None


def resolve_keyword(name: str) -> str:
    """A DICOM keyword from a keyword or a tag written ``(0010,0020)`` or ``00100020``."""
    text = name.strip()
    tag_match = _TAG_TEXT.match(text)
    if tag_match:
        tag = Tag(int(tag_match[1], 16), int(tag_match[2], 16))
        keyword = keyword_for_tag(tag)
        if not keyword:
            raise InvalidIdentifier(text, "not a tag of the DICOM data dictionary")
        return keyword
    if tag_for_keyword(text) is None:
        raise InvalidIdentifier(text, "not a keyword of the DICOM data dictionary")
    return text


def parse_key(spec: str) -> tuple[str, str | None]:
    """``-k`` syntax: ``Keyword=value`` to match, bare ``Keyword`` for a return key."""
    name, sep, value = spec.partition("=")
    return resolve_keyword(name), (value if sep else None)


def _values(value: object) -> list[str]:
    """The values of a key as strings: a backslash-separated text, a list, or none."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return value.split("\\")
    if isinstance(value, (list, tuple, MultiValue)):
        return [str(v) for v in value]
    return [str(value)]


def _values_in(ds: Dataset, keyword: str) -> list[str]:
    return _values(ds[keyword].value) if keyword in ds else []


_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def is_valid_uid(value: str) -> bool:
    """PS3.5 9.1: digits and dots, no leading zeros in a component, at most 64 characters."""
    return len(value) <= 64 and _UID.match(value) is not None


def _check_uid(keyword: str, uid: str) -> None:
    if not uid:
        raise InvalidIdentifier(keyword, "an empty UID in a list of UIDs")
    if "*" in uid or "?" in uid:
        raise InvalidIdentifier(keyword, f"wildcards are not allowed in a UID ({uid!r})")
    if not is_valid_uid(uid):
        raise InvalidIdentifier(
            keyword,
            f"{uid!r} is not a valid UID (digits and dots, at most 64 characters, "
            "no leading zeros in a component)",
        )


def _check_range(keyword: str, vr: str, value: str) -> None:
    pattern = {"DA": _DATE, "TM": _TIME, "DT": _DATETIME}[vr]
    start, sep, end = value.partition("-") if vr != "DT" else _split_dt_range(value)
    parts = [p for p in (start, end) if p]
    if not parts or (not sep and len(parts) != 1):
        raise InvalidIdentifier(keyword, f"{value!r} is not a {vr} value or range")
    for part in parts:
        if not pattern.match(part):
            raise InvalidIdentifier(
                keyword, f"{part!r} is not a valid {vr} value (range syntax: A-B, A-, -B)"
            )
    if sep and start and end and start > end:
        raise InvalidIdentifier(keyword, f"range {value!r} ends before it starts")


def _split_dt_range(value: str) -> tuple[str, str, str]:
    # A DT may carry a "-hhmm" UTC offset, so split on the one dash that sits
    # between two values: after 4+ digits, before a digit or at an end.
    match = re.match(r"^(.*?\d(?:[+-]\d{4})?)?(-)(\d.*)?$", value)
    if match is None or not (match[1] or match[3]):
        return value, "", ""
    if match[1] and _DATETIME.match(match[1]) and (not match[3] or _DATETIME.match(match[3])):
        return match[1] or "", "-", match[3] or ""
    if match[1] is None:
        return "", "-", match[3] or ""
    return value, "", ""


def _set(ds: Dataset, keyword: str, values: list[str]) -> None:
    vr = dictionary_VR(keyword)
    # pydicom warns about values it finds malformed; the validators below
    # refuse those with a better message, so the warning would only repeat it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            _set_value(ds, keyword, vr, values)
            # Encoding is where pydicom finds some values unfit (an IS of "abc").
            ds[keyword].to_json_dict(None, 2**31)
        except (TypeError, ValueError) as exc:
            raise InvalidIdentifier(keyword, f"not a value of VR {vr}: {exc}") from exc


def _set_value(ds: Dataset, keyword: str, vr: str, values: list[str]) -> None:
    if vr == "SQ":
        setattr(ds, keyword, [])
    elif not values:
        setattr(ds, keyword, None)
    elif len(values) == 1:
        setattr(ds, keyword, values[0])
    else:
        setattr(ds, keyword, values)


def _needs_charset(values: Iterable[str]) -> bool:
    return any(not v.isascii() for v in values)


def build_retrieve_identifier(root: Root, level: Level, keys: Mapping[str, KeyValue]) -> Dataset:
    """A C-GET/C-MOVE identifier from the unique keys down to ``level``; validated."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level.value
    all_values: list[str] = []
    for name, value in keys.items():
        keyword = resolve_keyword(name)
        values = _values(value)
        all_values += values
        _set(ds, keyword, values)
    if _needs_charset(all_values) and "SpecificCharacterSet" not in ds:
        ds.SpecificCharacterSet = "ISO_IR 192"
    validate_retrieve_identifier(ds, root)
    return ds


def _level_from(ds: Dataset, root: Root) -> Level:
    raw = ds.get("QueryRetrieveLevel")
    if raw in (None, ""):
        raise InvalidIdentifier("QueryRetrieveLevel", "is required")
    try:
        level = Level(str(raw).strip())
    except ValueError:
        raise InvalidIdentifier(
            "QueryRetrieveLevel", f"{raw!r} is not one of PATIENT, STUDY, SERIES, IMAGE"
        ) from None
    if level not in levels(root):
        raise InvalidIdentifier(
            "QueryRetrieveLevel", f"{level.value} is not a level of the {root.value} root"
        )
    return level


def _keyword(elem_tag: BaseTag) -> str:
    return keyword_for_tag(elem_tag) or f"({elem_tag.group:04X},{elem_tag.element:04X})"


def validate_retrieve_identifier(ds: Dataset, root: Root) -> Level:
    """Raise InvalidIdentifier unless ``ds`` is a valid retrieve identifier; return its level."""
    level = _level_from(ds, root)
    required = {UNIQUE_KEY[lv]: lv for lv in path_to(root, level)}
    for elem in ds:
        keyword = _keyword(elem.tag)
        if keyword == "QueryRetrieveLevel" or keyword in _RETRIEVE_EXTRAS:
            continue
        if keyword not in required:
            allowed = ", ".join(required)
            raise InvalidIdentifier(
                keyword,
                f"not allowed in a {root.value}-root {level.value} retrieve identifier "
                f"(only the unique keys {allowed}, PS3.4 C.4.2.1.4.1)",
            )
    for keyword, key_level in required.items():
        values = _values_in(ds, keyword)
        if not values:
            raise InvalidIdentifier(
                keyword, f"a {level.value}-level retrieve needs this unique key with a value"
            )
        if len(values) > 1 and key_level is not level:
            raise InvalidIdentifier(
                keyword, "a list of values is allowed only in the key of the retrieve level"
            )
        if keyword == "PatientID":
            if len(values) > 1:
                raise InvalidIdentifier(keyword, "must be a single value")
            if "*" in values[0] or "?" in values[0]:
                raise InvalidIdentifier(keyword, "wildcards are not allowed in a retrieve")
        else:
            for uid in values:
                _check_uid(keyword, uid)
    return level


def build_query_identifier(
    root: Root,
    level: Level,
    matching: Mapping[str, KeyValue] | None = None,
    return_keys: Iterable[str] = (),
    *,
    default_return_keys: bool = True,
) -> Dataset:
    """A C-FIND identifier: matching keys, return keys (and the usual ones); validated."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level.value
    wanted: list[str] = []
    if default_return_keys:
        wanted += DEFAULT_RETURN_KEYS[level]
        if root is Root.STUDY and level is Level.STUDY:
            wanted += _STUDY_ROOT_PATIENT_KEYS
    wanted += [resolve_keyword(k) for k in return_keys]
    for keyword in wanted:
        if keyword not in ds:
            _set(ds, keyword, [])
    all_values: list[str] = []
    for name, value in (matching or {}).items():
        keyword = resolve_keyword(name)
        values = _values(value)
        all_values += values
        _set(ds, keyword, values)
    if _needs_charset(all_values) and "SpecificCharacterSet" not in ds:
        ds.SpecificCharacterSet = "ISO_IR 192"
    validate_query_identifier(ds, root)
    return ds


def validate_query_identifier(ds: Dataset, root: Root) -> Level:
    """Raise InvalidIdentifier unless ``ds`` is a valid C-FIND identifier; return its level."""
    level = _level_from(ds, root)
    above = {UNIQUE_KEY[lv]: lv for lv in path_to(root, level) if lv is not level}
    for keyword in above:
        values = _values_in(ds, keyword)
        if len(values) != 1:
            raise InvalidIdentifier(
                keyword,
                f"a {level.value}-level query in the {root.value} root needs exactly one value "
                "for this unique key of a higher level (PS3.4 C.4.1.2.1)",
            )
    for elem in ds:
        keyword = _keyword(elem.tag)
        if keyword in _CONTROL_KEYWORDS:
            continue
        if not keyword_for_tag(elem.tag):
            raise InvalidIdentifier(keyword, "not an attribute of the DICOM data dictionary")
        key_level = level_of(keyword, root)
        if key_level is not None and key_level.depth > level.depth:
            raise InvalidIdentifier(
                keyword,
                f"belongs to the {key_level.value} level, below a {level.value}-level query",
            )
        if key_level is not None and key_level.depth < level.depth and keyword not in above:
            raise InvalidIdentifier(
                keyword,
                f"belongs to the {key_level.value} level: a {level.value}-level query in "
                f"the {root.value} root may hold only the unique key of a higher level",
            )
        _check_matching_value(keyword, elem.VR, elem.value, unique_above=keyword in above)
    return level


def _check_matching_value(keyword: str, vr: str, value: object, *, unique_above: bool) -> None:
    if vr == "SQ" or value is None or value == "":
        return
    values = _values(value)
    if vr == "UI":
        for uid in values:
            _check_uid(keyword, uid)
        return
    if len(values) > 1:
        raise InvalidIdentifier(
            keyword, "a list of values is a matching form only for UIDs (list of UID matching)"
        )
    if unique_above and ("*" in values[0] or "?" in values[0]):
        raise InvalidIdentifier(keyword, "a unique key of a higher level takes no wildcards")
    if vr in _RANGE_VRS and values[0] != "*":
        _check_range(keyword, vr, values[0])
