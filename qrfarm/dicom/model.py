"""The Query/Retrieve information model: roots, levels, operations, SOP classes.

PS3.4 Annex C: a root (patient or study) fixes which levels exist and which
unique keys identify an entity; each root and operation pair is one SOP class.
"""

from __future__ import annotations

from enum import StrEnum

from pydicom.uid import UID


class Root(StrEnum):
    """The top of the Q/R hierarchy."""

    PATIENT = "patient"
    STUDY = "study"


class Level(StrEnum):
    """A Query/Retrieve Level (0008,0052), ordered from the top down."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @property
    def depth(self) -> int:
        return _LEVEL_ORDER.index(self)


_LEVEL_ORDER = [Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE]


class Operation(StrEnum):
    """The DIMSE-C operations qrfarm runs."""

    ECHO = "echo"
    FIND = "find"
    GET = "get"
    MOVE = "move"


# The unique key of each level (PS3.4 C.4.1.1.3.1, C.6.1.1 and C.6.2.1).
UNIQUE_KEY: dict[Level, str] = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}

VERIFICATION_SOP_CLASS = UID("1.2.840.10008.1.1")

_SOP_CLASSES: dict[tuple[Root, Operation], UID] = {
    (Root.PATIENT, Operation.FIND): UID("1.2.840.10008.5.1.4.1.2.1.1"),
    (Root.PATIENT, Operation.MOVE): UID("1.2.840.10008.5.1.4.1.2.1.2"),
    (Root.PATIENT, Operation.GET): UID("1.2.840.10008.5.1.4.1.2.1.3"),
    (Root.STUDY, Operation.FIND): UID("1.2.840.10008.5.1.4.1.2.2.1"),
    (Root.STUDY, Operation.MOVE): UID("1.2.840.10008.5.1.4.1.2.2.2"),
    (Root.STUDY, Operation.GET): UID("1.2.840.10008.5.1.4.1.2.2.3"),
}


def sop_class(root: Root, operation: Operation) -> UID:
    """The Q/R SOP class UID for a root and an operation (FIND, GET, MOVE)."""
    if operation is Operation.ECHO:
        return VERIFICATION_SOP_CLASS
    return _SOP_CLASSES[(root, operation)]


def levels(root: Root) -> list[Level]:
    """The levels a root has, top first: the study root has no PATIENT level."""
    if root is Root.PATIENT:
        return list(_LEVEL_ORDER)
    return _LEVEL_ORDER[1:]


def roots_with(level: Level) -> list[Root]:
    """The roots that have ``level``: PATIENT is only in the patient root."""
    return [root for root in Root if level in levels(root)]


def path_to(root: Root, level: Level) -> list[Level]:
    """The levels from the root down to ``level``, inclusive."""
    return [lv for lv in levels(root) if lv.depth <= level.depth]
