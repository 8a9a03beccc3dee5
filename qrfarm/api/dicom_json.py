"""An identifier given as DICOM JSON turned into the named keys every job is built from.

Going through the same builders as named keys means the same rules apply
whichever form a caller uses.
"""

from __future__ import annotations

from typing import Any

from pydicom import Dataset
from pydicom.datadict import keyword_for_tag

from qrfarm.dicom import Level
from qrfarm.errors import FieldError

# Set by qrfarm itself from the request's level and the values' repertoire.
_SET_BY_QRFARM = {"QueryRetrieveLevel", "SpecificCharacterSet"}


def keys_from_dicom_json(identifier: dict[str, Any], level: Level) -> dict[str, Any]:
    """``{keyword: value}``; an empty element becomes a return key (None)."""
    loc: list[str | int] = ["body", "identifier"]
    try:
        ds = Dataset.from_json(identifier)
    except Exception as exc:  # pydicom raises many kinds on bad JSON
        raise FieldError(loc, f"not DICOM JSON: {exc}") from exc
    keys: dict[str, Any] = {}
    for element in ds:
        keyword = keyword_for_tag(element.tag)
        if not keyword:
            raise FieldError([*loc, f"{element.tag:08X}"], "not a tag of the DICOM data dictionary")
        if keyword == "QueryRetrieveLevel":
            if element.value and str(element.value) != level.value:
                raise FieldError(
                    [*loc, "00080052"], f"{element.value!r} contradicts level {level.value}"
                )
            continue
        if keyword in _SET_BY_QRFARM:
            continue
        if element.VR == "SQ":
            raise FieldError([*loc, keyword], "sequence matching is not supported")
        value = element.value
        if value is None or value == "" or value == []:
            keys[keyword] = None
        elif element.VM > 1:
            keys[keyword] = [str(v) for v in value]
        else:
            keys[keyword] = str(value)
    return keys
