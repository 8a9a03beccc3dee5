"""The one exception hierarchy of qrfarm.

Every error says whether retrying the same thing later can help
(``retriable``): a refused connection or a timeout may pass, a malformed
identifier never will. Callers that schedule retries read that attribute
instead of matching on types.
"""

from __future__ import annotations

from typing import Any, Self


class QrfarmError(Exception):
    """Root of every error qrfarm raises on purpose."""

    retriable: bool = False
    # What an interrupted operation had received before it stopped (an
    # OperationResult of qrfarm.dicom), so no response is lost with the error.
    partial: Any = None

    def with_partial(self, partial: Any) -> Self:
        self.partial = partial
        return self


class PermanentError(QrfarmError):
    """Retrying the same request cannot succeed."""

    retriable = False


class RetriableError(QrfarmError):
    """The same request may succeed later (peer busy, down, slow)."""

    retriable = True


class CommitmentUnavailable(RetriableError):
    """A destination gave no Storage Commitment answer the farm can use: it
    refused the association or the request, or its report did not come in
    time. Arrival is then verified by C-FIND instead. ``unsupported``: what it
    did says it does not commit for the farm (not merely that it was down)."""

    def __init__(self, message: str, *, unsupported: bool = True) -> None:
        super().__init__(message)
        self.unsupported = unsupported


class DeliveryUnverifiable(PermanentError):
    """What arrived at a destination cannot be checked: it answers neither
    Storage Commitment nor an IMAGE-level C-FIND."""


class InvalidIdentifier(PermanentError, ValueError):
    """A query or retrieve identifier breaks a rule of PS3.4; nothing was sent."""

    def __init__(self, attribute: str, rule: str) -> None:
        self.attribute = attribute
        self.rule = rule
        super().__init__(f"{attribute}: {rule}")


class InvalidNode(PermanentError, ValueError):
    """A node description (AE title, host, port, TLS files) is not usable."""


class InvalidTlsSettings(PermanentError, ValueError):
    """A listener's TLS settings (the storage SCP's, the API's) are incomplete or
    their files cannot be loaded: the service does not start without them."""


class TargetNotAllowed(PermanentError):
    """The host is outside the outbound allow-list of the settings."""


class WebhookTargetRefused(TargetNotAllowed):
    """A webhook host that is, or resolves to, an address of a class refused
    unless listed (loopback, private, link-local, cloud metadata, ...)."""

    def __init__(self, host: str, address: str, address_class: str, hint: str) -> None:
        where = host if host == address else f"{host!r}, which resolves to {address},"
        super().__init__(f"webhook host {where} is {address_class}; {hint}")
        self.host = host
        self.address = address
        self.address_class = address_class


class PresentationContextError(PermanentError):
    """Too many contexts asked for, or the peer accepted none for an operation."""


class PeerUnreachable(RetriableError):
    """No TCP (or TLS) connection could be made: refused, unreachable, timed out."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        self.host = host
        self.port = port
        self.reason = reason
        super().__init__(f"cannot connect to {host}:{port}: {reason}")


class AssociationRejected(QrfarmError):
    """The peer answered A-ASSOCIATE-RJ; ``reason`` is the peer's own diagnostic."""

    def __init__(self, result: str, source: str, reason: str, *, transient: bool) -> None:
        self.result = result
        self.source = source
        self.reason = reason
        self.retriable = transient
        super().__init__(f"association rejected ({result}) by {source}: {reason}")


class ProxyHeaderError(PermanentError):
    """A connection from a proxy did not begin with a valid PROXY protocol v2 header."""


class UpperLayerViolation(PermanentError):
    """A peer broke the DICOM upper layer protocol: its association is aborted
    with ``reason`` (an A-ABORT reason of PS3.8 9.3.8; 0x02: unexpected PDU)."""

    def __init__(self, message: str, reason: int = 0x02) -> None:
        super().__init__(message)
        self.reason = reason


class AssociationAborted(RetriableError):
    """The association ended with A-ABORT or a dropped connection mid-exchange."""


class DicomTimeout(RetriableError):
    """A configured timeout ran out; the association was aborted."""


class AcseTimeout(DicomTimeout):
    """The peer did not answer the association request in time."""


class DimseTimeout(DicomTimeout):
    """The peer sent no DIMSE message within the per-message timeout."""


class DeadlineExceeded(DicomTimeout):
    """The whole operation ran past its overall deadline."""


class OperationCancelled(QrfarmError):
    """The job's cancel was seen while its operation ran (a WADO-RS answer
    being read): the operation stopped there; what it recorded stays."""


class PermitLost(RetriableError):
    """The association's farm-wide permit could not be renewed (expired, taken
    by another worker, or its store unreachable): its operation was cancelled
    and the association let go, so that the node never sees one too many."""


class LeaseLost(RetriableError):
    """The job's lease was taken over by another worker: this runner's
    operation was cancelled, the new owner runs the job."""


class DimseFailure(QrfarmError):
    """An operation ended with a failure, warning or cancel status.

    Raised only when a caller asks for it (``OperationResult.raise_for_status``):
    the protocol layer itself returns such statuses as ordinary results.
    """

    def __init__(self, status: int, description: str, error_comment: str | None) -> None:
        self.status = status
        self.description = description
        self.error_comment = error_comment
        detail = f" ({error_comment})" if error_comment else ""
        super().__init__(f"status 0x{status:04X} {description}{detail}")


class OutOfResources(DimseFailure, RetriableError):
    """The peer answered Refused: Out of Resources (0xA7xx)."""


class MoveDestinationUnknown(DimseFailure, PermanentError):
    """The peer does not know the C-MOVE destination AE title (0xA801)."""


class IdentifierRejected(DimseFailure, PermanentError):
    """The peer refused the identifier: Identifier Does Not Match SOP Class (0xA9xx)."""


class BrokerUnavailable(RetriableError):
    """The queue's broker cannot be reached: nothing was sent (the sweeper sends it later)."""


class DatabaseNotReady(PermanentError):
    """The database is missing its schema or is at an older one."""


# --- Data sets and queries (qrfarm.dicom) ---------------------------------------


class DatasetTruncated(PermanentError, ValueError):
    """The encoded data set ends before what its headers announce."""


class QueryBudgetSpent(PermanentError):
    """More queries than the caller allowed were needed; the search stops."""


# --- Stored instances (qrfarm.storage, the storage SCP) -------------------------


class UnsafeUid(PermanentError, ValueError):
    """A UID that is not a UID, and so must not name a file or folder."""


class StorageFull(RetriableError):
    """The disk (or the quota) is full; nothing was left behind."""


class StorageError(RetriableError):
    """Any other failure to write an instance; nothing was left behind."""


class InstanceRefused(PermanentError):
    """A received instance is answered with ``status`` and not stored."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"0x{status:04X}: {reason}")


# --- Jobs (qrfarm.jobs, the client) ---------------------------------------------


class UnknownNode(PermanentError, LookupError):
    """No node of that name is registered."""


class InvalidCallback(PermanentError, ValueError):
    """A callback URL qrfarm cannot or may not call."""

    def __init__(self, url: str, rule: str) -> None:
        super().__init__(f"callback_url {url!r}: {rule}")
        self.url = url
        self.rule = rule


class NoSuchJob(PermanentError, LookupError):
    """No job has that id."""


class NotRetriable(PermanentError):
    """Only a partial or failed job can be retried."""


class IllegalTransition(PermanentError):
    """A state change the life cycle does not allow."""


class NoMessageIdFree(RetriableError):
    """Every Message ID of this calling AE title is held by a running or recent move."""


class NodeBusy(RetriableError):
    """No association permit for the node could be had now; the job waits its turn."""


class NoSuchPrefetch(PermanentError, LookupError):
    """No prefetch has that id."""


class NoSuchRule(PermanentError, LookupError):
    """No prefetch rule of that name is stored."""


class InvalidRule(PermanentError, ValueError):
    """A prefetch rule, or what an order gives it for prior selection, breaks
    the rule's schema (named in the message)."""


class NoSuchRetrieval(PermanentError, LookupError):
    """No retrieve by accession, patient or study has that id."""


class InvalidRetrieval(PermanentError, ValueError):
    """A retrieve by accession, patient or study asked for wrongly: none or
    several of them given, a wildcard, a bad date range (named in the message)."""


class ChildFailedAtStart(QrfarmError):
    """A supervised child process (a part of `qrfarm serve`) failed the same
    way each time it was started: starting it again cannot help."""


class WaitTimedOut(QrfarmError):
    """The job had not ended when the wait ran out; it goes on."""


# --- The faces (REST API, HL7 listener) -----------------------------------------


class NotSignedIn(QrfarmError):
    """A console page asked without a live session: the browser goes to sign in."""


class HeldInstanceMismatch(PermanentError):
    """A file the farm holds does not hold the instance its record names
    (changed at rest): it is not sent, nor confirmed, as that instance."""


class SignInRefused(QrfarmError):
    """A console sign-in refused: ``status_code`` and the words shown for it."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class TokenError(PermanentError):
    """A token name that is taken, unknown or not usable."""


class NotFound(PermanentError, LookupError):
    """A resource named in the path does not exist."""


class Conflict(PermanentError):
    """The request contradicts what is recorded."""


class FieldError(PermanentError, ValueError):
    """One field of the request breaks a rule."""

    def __init__(self, loc: list[str | int], rule: str) -> None:
        super().__init__(f"{'.'.join(map(str, loc))}: {rule}")
        self.loc = loc
        self.rule = rule


class BodyTooLarge(PermanentError):
    """A request body went past the API's limit; it was answered 413 and not read further."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than the limit of {limit} bytes")
        self.limit = limit


class ResentWithOtherContent(PermanentError):
    """A message or request reuses the reference (an HL7 control ID) of an earlier
    one but says something else: refused, never taken as the earlier one."""


class InvalidHl7Settings(PermanentError, ValueError):
    """The HL7 listener's allow-list or TLS settings are not usable: it does not start."""


class UnusableHl7Message(PermanentError):
    """An HL7 message qrfarm cannot act on; ``code`` is the NAK's acknowledgement code."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class NotForwardable(PermanentError):
    """A forward asked of a job that holds nothing to send on (not an ended
    retrieve into the farm), or to a node that cannot be a destination."""


class SyntaxRefused(PermanentError):
    """A destination accepts none of an instance's held transfer syntax, and
    converting it is not allowed or not possible (named in the message)."""


class DicomWebError(QrfarmError):
    """A DICOMweb request did not get through: the service unreachable, a
    timeout, or an HTTP error status. Retriable for what may pass (no
    connection, a timeout, 408, 429, 5xx), permanent otherwise."""

    def __init__(self, message: str, *, status: int | None = None, transient: bool) -> None:
        super().__init__(message)
        self.status = status
        self.retriable = transient


class DicomWebRedirectRefused(PermanentError):
    """A DICOMweb service answered with a redirect to another origin (scheme,
    host or port): refused before any connection there."""


class DicomWebResponseError(PermanentError, ValueError):
    """A DICOMweb answer qrfarm cannot use: a multipart body that breaks the
    rules, a part over the size limit, JSON that is not DICOM JSON."""
