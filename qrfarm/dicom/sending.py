"""Sending instances on by C-STORE: an association as a Storage SCU.

The farm forwards what it holds in the transfer syntax it holds it in, so
the contexts proposed are one per (SOP class, transfer syntax) held, and a
file is sent from its bytes on disk, not decoded and encoded again. Where
the caller allows conversion, a context per SOP class proposes the
uncompressed syntaxes too, for an instance the peer will not take as held.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, _config, build_context, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.presentation import PresentationContext

from qrfarm.errors import (
    AssociationAborted,
    AssociationRejected,
    PeerUnreachable,
    PresentationContextError,
    QrfarmError,
)

from .connection import Timeouts
from .contexts import MAX_CONTEXTS
from .model import VERIFICATION_SOP_CLASS
from .node import Node, validate_ae_title
from .sockets import tune

log = logging.getLogger(__name__)

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
NATIVE = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian})


@dataclass(frozen=True)
class Held:
    """One kind of instance the sender holds: a SOP class in a transfer syntax."""

    sop_class_uid: str
    transfer_syntax: str


def held_contexts(held: Iterable[Held], *, with_fallback: bool) -> list[PresentationContext]:
    """Verification, then one context per SOP class and held syntax;
    ``with_fallback``: one more per SOP class proposing the uncompressed
    syntaxes (for a conversion, when the peer refuses the held syntax).

    Raises PresentationContextError past 128 contexts (PS3.8)."""
    # Verification too: a peer that refuses every storage context asked for
    # still associates (Orthanc aborts an association with nothing accepted),
    # and each refusal can then be told for what it is.
    contexts = [build_context(VERIFICATION_SOP_CLASS, list(UNCOMPRESSED))]
    classes: dict[str, set[str]] = {}
    for item in dict.fromkeys(held):
        classes.setdefault(item.sop_class_uid, set()).add(item.transfer_syntax)
        contexts.append(build_context(UID(item.sop_class_uid), [UID(item.transfer_syntax)]))
    if with_fallback:
        # Both uncompressed syntaxes, whatever is held: a peer that takes one
        # of them only (Implicit VR Little Endian, say) picks it here.
        for sop_class in classes:
            contexts.append(build_context(UID(sop_class), list(UNCOMPRESSED)))
    if len(contexts) > MAX_CONTEXTS:
        raise PresentationContextError(
            f"{len(contexts)} presentation contexts needed; an association holds at most "
            f"{MAX_CONTEXTS} (PS3.8 9.3.2.2)"
        )
    return contexts


@dataclass(frozen=True)
class StoreOutcome:
    """The peer's answer to one C-STORE."""

    status: int
    transfer_syntax: str
    error_comment: str | None = None

    @property
    def ok(self) -> bool:
        # Success, or a warning (B000, B006, B007): the peer holds the instance.
        return self.status == 0 or 0xB000 <= self.status <= 0xBFFF


class StoreConnection:
    """An open association proposing storage contexts as SCU. Use :meth:`open`."""

    def __init__(self, node: Node, calling_ae: str, timeouts: Timeouts) -> None:
        self.node = node
        self.calling_ae = validate_ae_title(calling_ae, "calling AE title")
        self.timeouts = timeouts
        self._assoc: Association | None = None
        self._rejection: A_ASSOCIATE_RJ | None = None
        self._connected = False
        self._stopped: QrfarmError | None = None
        self._lock = threading.Lock()
        self._next_message_id = 1

    @classmethod
    def open(
        cls,
        node: Node,
        contexts: Sequence[PresentationContext],
        *,
        calling_ae: str,
        timeouts: Timeouts | None = None,
        max_pdu: int = 0,
    ) -> StoreConnection:
        """Associate with ``node`` proposing ``contexts`` (``max_pdu`` 0: no limit
        on what the peer sends; it sends only responses)."""
        if not contexts:
            raise PresentationContextError("no presentation context asked for")
        conn = cls(node, calling_ae, timeouts or Timeouts())
        conn._associate(list(contexts), max_pdu)
        return conn

    def _associate(self, contexts: list[PresentationContext], max_pdu: int) -> None:
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False
        ae = AE(ae_title=self.calling_ae)
        ae.requested_contexts = contexts
        ae.connection_timeout = self.timeouts.connect
        ae.acse_timeout = self.timeouts.acse
        ae.dimse_timeout = self.timeouts.dimse
        ae.network_timeout = self.timeouts.network
        ae.maximum_pdu_size = max_pdu
        tls_args = None
        if self.node.tls is not None:
            tls_args = (self.node.tls.context(), self.node.tls.server_hostname or self.node.host)
        assoc = ae.associate(
            self.node.host,
            self.node.port,
            ae_title=self.node.ae_title,
            tls_args=tls_args,
            evt_handlers=[
                (evt.EVT_CONN_OPEN, self._on_open),
                (evt.EVT_PDU_RECV, self._on_pdu),
            ],
        )
        if assoc.is_established:
            assoc.unbind(evt.EVT_PDU_RECV, self._on_pdu)
            self._assoc = assoc
            return
        if self._rejection is not None:
            rj = self._rejection
            raise AssociationRejected(
                rj.result_str, rj.source_str, rj.reason_str, transient=rj.result == 0x02
            )
        if not self._connected:
            raise PeerUnreachable(self.node.host, self.node.port, "connection refused or timed out")
        raise AssociationAborted(f"{self.node} aborted the association request")

    def _on_open(self, event: Event) -> None:
        self._connected = True
        tune(event.assoc.dul.socket)

    def _on_pdu(self, event: Event) -> None:
        if isinstance(event.pdu, A_ASSOCIATE_RJ):
            self._rejection = event.pdu

    # -- what the peer accepted ----------------------------------------------------

    @property
    def accepted(self) -> set[tuple[str, str]]:
        """(SOP class, transfer syntax) pairs accepted, for the SCU role."""
        assoc = self._assoc
        if assoc is None:
            return set()
        return {
            (str(c.abstract_syntax), str(c.transfer_syntax[0]))
            for c in assoc.accepted_contexts
            if c.abstract_syntax is not None and c.transfer_syntax
        }

    def accepts(self, sop_class: str, transfer_syntax: str) -> bool:
        return (sop_class, transfer_syntax) in self.accepted

    def uncompressed_for(self, sop_class: str) -> str | None:
        """An uncompressed syntax the peer accepted for ``sop_class``, explicit first."""
        accepted = self.accepted
        for syntax in UNCOMPRESSED:
            if (sop_class, str(syntax)) in accepted:
                return str(syntax)
        return None

    # -- sending ---------------------------------------------------------------------

    def send_file(self, path: Path, transfer_syntax: str) -> StoreOutcome:
        """C-STORE of a Part-10 file as its bytes are on disk, in its own
        ``transfer_syntax`` (which the peer must have accepted for its SOP class)."""
        # Sent from the file at its data set's offset, never decoded; the flag
        # is read by pynetdicom at each call, and only path sends look at it.
        _config.STORE_SEND_CHUNKED_DATASET = True
        return self._send(path, transfer_syntax)

    def send_dataset(self, dataset: Dataset) -> StoreOutcome:
        """C-STORE of a data set in its file meta's transfer syntax (pynetdicom
        converts between the uncompressed ones if the peer accepted another)."""
        syntax = str(dataset.file_meta.TransferSyntaxUID)
        assoc = self._assoc
        if assoc is not None and syntax in NATIVE:
            with suppress(ValueError):
                context = assoc._get_valid_context(
                    dataset.SOPClassUID, syntax, "scu", allow_conversion=True
                )
                syntax = str(context.transfer_syntax[0])
        return self._send(dataset, syntax)

    def _send(self, what: Path | Dataset, syntax: str) -> StoreOutcome:
        if self._stopped is not None:
            raise self._stopped
        assoc = self._assoc
        if assoc is None or not assoc.is_established:
            raise AssociationAborted(f"the association with {self.node} is no longer open")
        with self._lock:
            msg_id = self._next_message_id
            self._next_message_id = msg_id % 0xFFFF + 1
        try:
            status = assoc.send_c_store(what, msg_id=msg_id)
        except ValueError as exc:
            # No accepted context for it: the caller chose wrongly.
            raise PresentationContextError(str(exc)) from exc
        if "Status" not in status:
            self._assoc = None
            if self._stopped is not None:
                raise self._stopped
            raise AssociationAborted(
                f"the association with {self.node} was aborted, or sent no C-STORE "
                f"response within {self.timeouts.dimse:g} s"
            )
        return StoreOutcome(int(status.Status), syntax, status.get("ErrorComment"))

    # -- life -----------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        assoc = self._assoc
        return assoc is not None and assoc.is_established

    @property
    def stopped(self) -> QrfarmError | None:
        return self._stopped

    def stop(self, reason: QrfarmError) -> None:
        """Stop sending (a lost permit or lease): abort, and refuse any later send."""
        self._stopped = reason
        self.abort()

    def close(self) -> None:
        assoc, self._assoc = self._assoc, None
        if assoc is None:
            return
        if assoc.is_established:
            assoc.release()
        if assoc.is_established:
            assoc.abort()

    def abort(self) -> None:
        assoc, self._assoc = self._assoc, None
        if assoc is not None and assoc.is_established:
            assoc.abort()

    def rest(self) -> None:
        """Nothing to do: present so that the worker's pool can hold one."""

    def __enter__(self) -> StoreConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
