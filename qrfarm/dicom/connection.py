"""One association with a peer, and any number of operations on it.

A :class:`Connection` opens an association with exactly the presentation
contexts asked for, runs C-ECHO, C-FIND, C-GET and C-MOVE on it one at a
time, keeps every response, and closes. Exceptions are only for what stops
the exchange itself (refused, rejected, aborted, timed out); a failure
status is a result like any other.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext

from qrfarm.errors import (
    AssociationAborted,
    DeadlineExceeded,
    DimseTimeout,
    PresentationContextError,
    QrfarmError,
)

from .associate import Timeouts, open_association
from .contexts import check_count
from .identifiers import validate_query_identifier, validate_retrieve_identifier
from .model import Operation, Root, sop_class
from .node import Node, validate_ae_title
from .reactor import let_reactor_resume, rest
from .responses import OperationResult, Response
from .sub_stores import InstanceSink, StoreRequest, SubStores

# Called for every response as it arrives (e.g. to show progress, or to
# decide to cancel); it runs on the thread that runs the operation.
ResponseCallback = Callable[[Response], None]
# Takes an N-EVENT-REPORT's Event Type ID and Event Information (None when it
# cannot be decoded); returns the status to answer.
EventReportHandler = Callable[[int | None, Dataset | None], int]


class Connection:
    """An open association to one node. Use :meth:`open`; close it, or use ``with``."""

    def __init__(self, node: Node, calling_ae: str, timeouts: Timeouts) -> None:
        self.node = node
        self.calling_ae = validate_ae_title(calling_ae, "calling AE title")
        self.timeouts = timeouts
        self._assoc: Association | None = None
        self._next_message_id = 1
        self._lock = threading.Lock()
        self._running: tuple[int, str] | None = None
        # Why the caller stopped this association's work (a lost permit or
        # lease): the running operation, and any later one, raise it.
        self._stopped: QrfarmError | None = None
        self._sub_stores = SubStores()

    # -- opening and closing -------------------------------------------------

    @classmethod
    def open(
        cls,
        node: Node,
        contexts: Sequence[PresentationContext],
        *,
        calling_ae: str = "QRFARM",
        timeouts: Timeouts | None = None,
        max_pdu: int = 65536,
    ) -> Connection:
        """Associate with ``node`` proposing exactly ``contexts``.

        Raises PeerUnreachable, AssociationRejected, AcseTimeout or
        AssociationAborted when no association results.
        """
        contexts = list(contexts)
        check_count(contexts)
        conn = cls(node, calling_ae, timeouts or Timeouts())
        conn._assoc = open_association(
            node,
            conn.calling_ae,
            conn.timeouts,
            contexts,
            max_pdu,
            [(evt.EVT_C_STORE, conn._sub_stores.on_c_store)],
        )
        return conn

    @property
    def is_open(self) -> bool:
        """Established, as far as the association and its transport know.

        The DUL's state machine is asked too: it follows the peer's A-ABORT
        or a closed connection even while the association's reactor rests.
        """
        assoc = self._assoc
        return (
            assoc is not None
            and assoc.is_established
            and assoc.dul.is_alive()
            and assoc.dul.state_machine.current_state == "Sta6"
        )

    def rest(self) -> None:
        """Let the association wait for its next operation without polling
        (:func:`qrfarm.dicom.reactor.rest`). Call only between operations."""
        assoc = self._assoc
        if assoc is not None and assoc.is_established:
            rest(assoc)

    @property
    def accepted_contexts(self) -> list[PresentationContext]:
        return list(self._assoc.accepted_contexts) if self._assoc else []

    def close(self) -> None:
        """Release the association (abort it if the release does not go through)."""
        assoc, self._assoc = self._assoc, None
        if assoc is None:
            return
        if assoc.is_established:
            assoc.release()
        if assoc.is_established:
            assoc.abort()

    def abort(self) -> None:
        """Abort the association at once (A-ABORT)."""
        assoc, self._assoc = self._assoc, None
        if assoc is not None and assoc.is_established:
            assoc.abort()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- operations ------------------------------------------------------------

    def echo(self) -> Response:
        """C-ECHO; the response (success or not) is returned."""
        assoc = self._established(Operation.ECHO, Root.STUDY)
        message_id = self._take_message_id(None)
        status = assoc.send_c_echo(msg_id=message_id)
        if "Status" not in status:
            raise self._interrupted(time.monotonic(), None, deadline_hit=False)
        self._let_reactor_resume()
        return Response.from_pynetdicom(Operation.ECHO, status, None)

    def find(
        self,
        identifier: Dataset,
        root: Root = Root.STUDY,
        *,
        validate: bool = True,
        on_response: ResponseCallback | None = None,
        deadline: float | None = None,
        message_id: int | None = None,
    ) -> OperationResult:
        """C-FIND; ``validate=False`` sends a caller-built identifier as it is."""
        if validate:
            validate_query_identifier(identifier, root)
        assoc = self._established(Operation.FIND, root)
        uid = sop_class(root, Operation.FIND)
        msg_id = self._take_message_id(message_id)
        responses = assoc.send_c_find(identifier, uid, msg_id=msg_id)
        return self._collect(Operation.FIND, uid, msg_id, responses, on_response, deadline)

    def get(
        self,
        identifier: Dataset,
        root: Root = Root.STUDY,
        *,
        store: InstanceSink,
        validate: bool = True,
        on_response: ResponseCallback | None = None,
        deadline: float | None = None,
        message_id: int | None = None,
    ) -> OperationResult:
        """C-GET; each instance the peer sends is handed to ``store``."""
        if validate:
            validate_retrieve_identifier(identifier, root)
        assoc = self._established(Operation.GET, root)
        uid = sop_class(root, Operation.GET)
        msg_id = self._take_message_id(message_id)
        sub_stores = self._sub_stores
        sub_stores.sink, sub_stores.stored = store, []
        try:
            responses = assoc.send_c_get(identifier, uid, msg_id=msg_id)
            result = self._collect(Operation.GET, uid, msg_id, responses, on_response, deadline)
        finally:
            sub_stores.sink = None
        result.instances = sub_stores.stored
        return result

    def move(
        self,
        identifier: Dataset,
        destination: str,
        root: Root = Root.STUDY,
        *,
        validate: bool = True,
        on_response: ResponseCallback | None = None,
        deadline: float | None = None,
        message_id: int | None = None,
    ) -> OperationResult:
        """C-MOVE to ``destination``; ``message_id`` fixes the Message ID (never 0)."""
        destination = validate_ae_title(destination, "move destination")
        if validate:
            validate_retrieve_identifier(identifier, root)
        assoc = self._established(Operation.MOVE, root)
        uid = sop_class(root, Operation.MOVE)
        msg_id = self._take_message_id(message_id)
        responses = assoc.send_c_move(identifier, destination, uid, msg_id=msg_id)
        return self._collect(Operation.MOVE, uid, msg_id, responses, on_response, deadline)

    def action(
        self, information: Dataset, action_type: int, sop_class_uid: str, sop_instance_uid: str
    ) -> int:
        """N-ACTION (e.g. a Storage Commitment request); its response's status."""
        if self._stopped is not None:
            raise self._stopped
        assoc = self._assoc
        if assoc is None or not assoc.is_established:
            raise AssociationAborted(f"the association with {self.node} is no longer open")
        if not any(c.abstract_syntax == sop_class_uid for c in assoc.accepted_contexts):
            raise PresentationContextError(
                f"{self.node} accepted no presentation context for {sop_class_uid}"
            )
        started = time.monotonic()
        try:
            status, _reply = assoc.send_n_action(
                information,
                action_type,
                sop_class_uid,
                sop_instance_uid,
                msg_id=self._take_message_id(None),
            )
        except ValueError as exc:  # accepted, but not with us as its SCU
            raise PresentationContextError(f"{self.node}: {exc}") from exc
        if "Status" not in status:
            raise self._interrupted(started, None, deadline_hit=False)
        self._let_reactor_resume()
        return int(status.Status)

    def on_event_report(self, handler: EventReportHandler) -> None:
        """Answer the N-EVENT-REPORTs the peer sends on this association with
        ``handler(event_type, event_information)``, which returns the status."""

        def handle(event: Event) -> tuple[int, None]:
            try:
                info = event.event_information
            except (AttributeError, ValueError):
                info = None
            return handler(event.event_type, info), None

        if self._assoc is not None:
            self._assoc.bind(evt.EVT_N_EVENT_REPORT, handle)

    def cancel(self) -> bool:
        """Send C-CANCEL for the running operation; False when none is running.

        Safe to call from another thread or from an ``on_response`` callback.
        The peer may ignore it (Orthanc does): the operation then runs to its end.
        """
        with self._lock:
            running, assoc = self._running, self._assoc
        if running is None or assoc is None or not assoc.is_established:
            return False
        msg_id, uid = running
        assoc.send_c_cancel(msg_id, query_model=uid)
        return True

    def stop(self, reason: QrfarmError) -> None:
        """Stop the running operation, and refuse any later one, with ``reason``.

        Safe to call from another thread. The running operation is sent
        C-CANCEL; a peer that ignores it (Orthanc) gets an A-ABORT after a
        grace period. The operation then raises ``reason``, with what it had
        received as its ``partial``; so does any operation started afterwards.
        """
        with self._lock:
            if self._stopped is not None:
                return
            self._stopped = reason
            running = self._running is not None
        if running:
            self._cancel_then_abort()

    @property
    def stopped(self) -> QrfarmError | None:
        """The reason :meth:`stop` was called with, if it was."""
        return self._stopped

    # -- internals -------------------------------------------------------------

    def _established(self, operation: Operation, root: Root) -> Association:
        if self._stopped is not None:
            raise self._stopped
        assoc = self._assoc
        if assoc is None or not assoc.is_established:
            raise AssociationAborted(f"the association with {self.node} is no longer open")
        uid = sop_class(root, operation)
        if not any(c.abstract_syntax == uid for c in assoc.accepted_contexts):
            raise PresentationContextError(
                f"{self.node} accepted no presentation context for {uid.name} ({uid}); "
                "open the connection with a context for this operation and root"
            )
        return assoc

    def _take_message_id(self, requested: int | None) -> int:
        if requested is not None:
            if not 1 <= requested <= 0xFFFF:
                raise ValueError(f"message ID {requested}: must be between 1 and 65535")
            return requested
        # Never 0: Orthanc leaves the Move Originator out of sub-operations then.
        msg_id = self._next_message_id
        self._next_message_id = msg_id % 0xFFFF + 1
        return msg_id

    def _collect(
        self,
        operation: Operation,
        uid: str,
        msg_id: int,
        responses: Iterator[tuple[Dataset, Dataset | None]],
        on_response: ResponseCallback | None,
        deadline: float | None,
    ) -> OperationResult:
        """Consume every response (pynetdicom needs it), keeping each one."""
        result = OperationResult(operation, msg_id)
        with self._lock:
            self._running = (msg_id, uid)
            stopped = self._stopped is not None
        if stopped:  # stopped between the request and now: cancel it too
            self._cancel_then_abort()
        deadline_hit = threading.Event()
        timer = self._deadline_timer(deadline, deadline_hit)
        last_message = time.monotonic()
        try:
            for status, identifier in responses:
                if "Status" not in status:
                    result.ended_at = time.time()
                    error = self._interrupted(last_message, result, deadline_hit.is_set())
                    raise error
                last_message = time.monotonic()
                response = Response.from_pynetdicom(operation, status, identifier)
                result.responses.append(response)
                if on_response is not None:
                    on_response(response)
        finally:
            with self._lock:
                self._running = None
            if timer is not None:
                timer.cancel()
            self._let_reactor_resume()
        result.ended_at = time.time()
        if self._stopped is not None:
            raise self._stopped.with_partial(result)
        if deadline_hit.is_set():
            raise DeadlineExceeded(
                f"{operation.value} on {self.node} ran past its deadline of {deadline:g} s "
                f"and was cancelled"
            ).with_partial(result)
        return result

    def _let_reactor_resume(self) -> None:
        assoc = self._assoc
        if assoc is not None and assoc.is_established:
            let_reactor_resume(assoc)

    def _deadline_timer(
        self, deadline: float | None, hit: threading.Event
    ) -> threading.Timer | None:
        if deadline is None:
            return None

        def expire() -> None:
            hit.set()
            self._cancel_then_abort()

        timer = threading.Timer(deadline, expire)
        timer.daemon = True
        timer.start()
        return timer

    def _cancel_then_abort(self) -> None:
        """Ask nicely first; a peer that ignores C-CANCEL gets an A-ABORT after
        a grace period, which ends the response loop."""
        with suppress(Exception):
            self.cancel()
        grace = threading.Timer(min(5.0, self.timeouts.dimse), self._abort_if_running)
        grace.daemon = True
        grace.start()

    def _abort_if_running(self) -> None:
        with self._lock:
            running, assoc = self._running, self._assoc
        if running is not None and assoc is not None and assoc.is_established:
            assoc.abort()

    def _interrupted(
        self, last_message: float, result: OperationResult | None, deadline_hit: bool
    ) -> QrfarmError:
        """The error for a response loop that ended without a final response."""
        self._assoc = None
        idle = time.monotonic() - last_message
        error: QrfarmError
        if self._stopped is not None:
            error = self._stopped  # aborted after C-CANCEL went unanswered
        elif deadline_hit:
            error = DeadlineExceeded(f"the operation on {self.node} ran past its deadline")
        elif idle >= self.timeouts.dimse * 0.9:
            error = DimseTimeout(
                f"{self.node} sent no response within {self.timeouts.dimse:g} s; "
                "the association was aborted"
            )
        else:
            error = AssociationAborted(
                f"the association with {self.node} was aborted or its connection closed "
                "before the final response"
            )
        return error.with_partial(result) if result is not None else error


__all__ = [
    "Connection",
    "EventReportHandler",
    "InstanceSink",
    "ResponseCallback",
    "StoreRequest",
    "Timeouts",
]
