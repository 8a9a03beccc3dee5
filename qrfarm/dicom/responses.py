"""Every DIMSE response an operation received, kept whole.

A failure or warning status is a response like any other: it is recorded and
returned as the operation's outcome. :meth:`OperationResult.raise_for_status`
turns it into an exception for callers that want one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pynetdicom.status import (
    QR_FIND_SERVICE_CLASS_STATUS,
    QR_GET_SERVICE_CLASS_STATUS,
    QR_MOVE_SERVICE_CLASS_STATUS,
    VERIFICATION_SERVICE_CLASS_STATUS,
    code_to_category,
)

from qrfarm.errors import (
    DimseFailure,
    IdentifierRejected,
    MoveDestinationUnknown,
    OutOfResources,
)

from .model import Operation


class StatusCategory(StrEnum):
    PENDING = "pending"
    SUCCESS = "success"
    WARNING = "warning"
    FAILURE = "failure"
    CANCEL = "cancel"


class Status:
    """Every DIMSE status code qrfarm sends or acts on, named once.

    The same code may carry a service's own name: 0xA900 is "Identifier does
    not match SOP Class" in a C-FIND/C-GET/C-MOVE and "Data Set does not match
    SOP Class" in a C-STORE; 0xC000 is "Unable to process" there and "Cannot
    understand" here (the SCP and the C-GET sinks answer it alike).
    """

    # General statuses (PS3.7 C).
    SUCCESS = 0x0000
    # An instance sent on a presentation context negotiated for another SOP class.
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    REFUSED_NOT_AUTHORIZED = 0x0124
    # Query/Retrieve (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.5).
    PENDING = 0xFF00
    PENDING_WARNING = 0xFF01
    CANCEL = 0xFE00
    SUB_OPERATIONS_WARNING = 0xB000
    OUT_OF_RESOURCES = 0xA700
    OUT_OF_RESOURCES_MATCHES = 0xA701
    OUT_OF_RESOURCES_SUB_OPERATIONS = 0xA702
    MOVE_DESTINATION_UNKNOWN = 0xA801
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    UNABLE_TO_PROCESS = 0xC000
    # Storage (PS3.4 B.2.3); Out of Resources is 0xA700 here too.
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    # DIMSE-N (PS3.7 C): what the farm answers a Storage Commitment report
    # (N-EVENT-REPORT) it cannot take; also the Failure Reasons a report gives.
    PROCESSING_FAILURE = 0x0110
    NO_SUCH_OBJECT_INSTANCE = 0x0112
    NO_SUCH_EVENT_TYPE = 0x0113
    INVALID_ARGUMENT_VALUE = 0x0115
    RESOURCE_LIMITATION = 0x0213
    # Every code of a class (the standard names ranges: 0xA7xx, 0xA9xx).
    OUT_OF_RESOURCES_RANGE = range(0xA700, 0xA800)
    DOES_NOT_MATCH_SOP_CLASS_RANGE = range(0xA900, 0xAA00)


_DESCRIPTIONS = {
    Operation.ECHO: VERIFICATION_SERVICE_CLASS_STATUS,
    Operation.FIND: QR_FIND_SERVICE_CLASS_STATUS,
    Operation.GET: QR_GET_SERVICE_CLASS_STATUS,
    Operation.MOVE: QR_MOVE_SERVICE_CLASS_STATUS,
}


def categorize(status: int) -> StatusCategory:
    """The category of a status; an unknown code counts as a failure."""
    name = code_to_category(status).lower()
    try:
        return StatusCategory(name)
    except ValueError:
        return StatusCategory.FAILURE


def describe(status: int, operation: Operation) -> str:
    """The standard's name for a status code of this service, or its category."""
    known = _DESCRIPTIONS[operation].get(status)
    if known and known[1]:
        return known[1]
    return categorize(status).value.capitalize()


def _optional_int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    return int(value) if value is not None and value != "" else None


def _tags(value: object) -> tuple[BaseTag, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple, MultiValue)):
        return tuple(Tag(v) for v in value)
    return (Tag(value),)  # type: ignore[arg-type]


def _uids(value: object) -> tuple[str, ...]:
    if value in (None, ""):
        return ()
    if isinstance(value, (list, tuple, MultiValue)):
        return tuple(str(v) for v in value if v)
    return tuple(u for u in str(value).split("\\") if u)


@dataclass(frozen=True)
class Response:
    """One response of a C-ECHO, C-FIND, C-GET or C-MOVE, as the peer sent it."""

    status: int
    category: StatusCategory
    description: str
    identifier: Dataset | None = None
    remaining: int | None = None
    completed: int | None = None
    failed: int | None = None
    warning: int | None = None
    error_comment: str | None = None
    offending_elements: tuple[BaseTag, ...] = ()
    failed_sop_instance_uids: tuple[str, ...] = ()
    received_at: float = field(default_factory=time.time)

    @classmethod
    def from_pynetdicom(
        cls, operation: Operation, status: Dataset, identifier: Dataset | None
    ) -> Response:
        code = int(status.Status)
        failed_list: object = None
        if identifier is not None and "FailedSOPInstanceUIDList" in identifier:
            failed_list = identifier.FailedSOPInstanceUIDList
        comment = status.get("ErrorComment")
        return cls(
            status=code,
            category=categorize(code),
            description=describe(code, operation),
            identifier=identifier,
            remaining=_optional_int(status, "NumberOfRemainingSuboperations"),
            completed=_optional_int(status, "NumberOfCompletedSuboperations"),
            failed=_optional_int(status, "NumberOfFailedSuboperations"),
            warning=_optional_int(status, "NumberOfWarningSuboperations"),
            error_comment=str(comment) if comment else None,
            offending_elements=_tags(status.get("OffendingElement")),
            failed_sop_instance_uids=_uids(failed_list),
        )

    @property
    def is_pending(self) -> bool:
        return self.category is StatusCategory.PENDING

    def summary(self) -> str:
        text = f"0x{self.status:04X} {self.description}"
        if self.error_comment:
            text += f": {self.error_comment}"
        return text


@dataclass(frozen=True)
class StoredInstance:
    """An instance a C-GET brought in over the operation's own association."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    status: int


@dataclass
class OperationResult:
    """The whole exchange of one operation: every response, in order."""

    operation: Operation
    message_id: int
    responses: list[Response] = field(default_factory=list)
    instances: list[StoredInstance] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    cancel_requested: bool = False

    @property
    def final(self) -> Response:
        """The final (non-pending) response; there is one once the operation ended."""
        for response in reversed(self.responses):
            if not response.is_pending:
                return response
        raise LookupError("the operation has no final response")

    @property
    def matches(self) -> list[Dataset]:
        """C-FIND answers: the identifiers of the pending responses."""
        return [r.identifier for r in self.responses if r.is_pending and r.identifier is not None]

    @property
    def ok(self) -> bool:
        return self.final.category is StatusCategory.SUCCESS

    def count(self, which: str) -> int:
        """A final sub-operation count ('completed', 'failed', 'warning'), 0 when left out."""
        value = getattr(self.final, which)
        return int(value) if value is not None else 0

    @property
    def counts_omitted(self) -> list[str]:
        """Which required final counts the peer left out (some PACS in the field do)."""
        if self.operation not in (Operation.GET, Operation.MOVE):
            return []
        final = self.final
        return [n for n in ("completed", "failed", "warning") if getattr(final, n) is None]

    def raise_for_status(self) -> None:
        """Raise the matching DimseFailure unless the operation ended in success."""
        final = self.final
        if final.category is StatusCategory.SUCCESS:
            return
        error_type: type[DimseFailure] = DimseFailure
        if final.status == Status.MOVE_DESTINATION_UNKNOWN:
            error_type = MoveDestinationUnknown
        elif final.status in Status.OUT_OF_RESOURCES_RANGE:
            error_type = OutOfResources
        elif final.status in Status.DOES_NOT_MATCH_SOP_CLASS_RANGE:
            error_type = IdentifierRejected
        raise error_type(final.status, final.description, final.error_comment)
