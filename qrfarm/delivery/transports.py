"""How a forward's instances reach the destination: the transport seam.

A transport takes the instances to send and answers, for each, what became
of it. DIMSE C-STORE is built in (:class:`DimseTransport`); another transport
(DICOMweb STOW-RS) is a factory under its name in the worker's
``ForwardDeps.transports`` (qrfarm.delivery.forward_run), and
:func:`transport_name` says which one a destination uses.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID

from qrfarm.dicom import Node
from qrfarm.dicom.sending import (
    Held,
    StoreConnection,
    StoreOutcome,
    check_identity,
    held_contexts,
)
from qrfarm.errors import NodeBusy, QrfarmError, SyntaxRefused
from qrfarm.models import NodeRecord

from .transcode import converted

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outgoing:
    """One held instance to send."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    path: Path


@dataclass(frozen=True)
class Sent:
    """What became of one instance. UIDs are those the destination got."""

    sop_instance_uid: str  # as held
    sent_sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax: str | None
    status: int | None
    ok: bool
    # Why it was not sent or not taken (no patient data: syntaxes, statuses).
    reason: str | None = None
    retriable: bool = False


# Changes a data set before it is sent (pseudonymising); returns nothing.
Rewrite = Callable[[Dataset], None]


class Transport(Protocol):
    def send(self, items: Sequence[Outgoing], stop: threading.Event) -> list[Sent]:
        """Send ``items``; one Sent for each item it got to (all, unless ``stop``
        was set). Raises only when nothing could be sent at all (the
        destination unreachable, refusing the association, no permit free)."""
        ...


class StoreConnections(Protocol):
    """Associations that send to a node under its permits (the worker's pool)."""

    def store(
        self,
        node: Node,
        contexts: list,  # type: ignore[type-arg]
        *,
        spare: bool = False,
    ) -> AbstractContextManager[StoreConnection]: ...


@dataclass(frozen=True)
class TransportOptions:
    node: Node
    node_id: int  # its row: what the node is reached by is read from it, never by address
    transcode: bool
    rewrite: Rewrite | None
    # At most this many associations at once (the node's own limit caps it).
    associations: int = 4


TransportFactory = Callable[[TransportOptions], Transport]


def transport_name(node: NodeRecord) -> str:
    """Which transport a destination is reached by: DIMSE unless it says otherwise
    (a factory of that name is then in the worker's ForwardDeps.transports)."""
    name = getattr(node, "delivery_transport", None)
    return str(name) if name else "dimse"


class DimseTransport:
    """C-STORE over up to ``associations`` associations at once, each under one
    of the node's permits: the first waits for its permit, the others are
    taken only if free at that moment."""

    def __init__(self, connections: StoreConnections, options: TransportOptions) -> None:
        self.connections = connections
        self.options = options

    def send(self, items: Sequence[Outgoing], stop: threading.Event) -> list[Sent]:
        if not items:
            return []
        contexts = held_contexts(
            [Held(i.sop_class_uid, i.transfer_syntax) for i in items],
            with_fallback=self.options.transcode,
        )
        work: queue.SimpleQueue[Outgoing] = queue.SimpleQueue()
        for item in items:
            work.put(item)
        results: list[Sent] = []
        lock = threading.Lock()
        wanted = max(1, min(self.options.associations, self.options.node.max_associations))
        errors: list[BaseException] = []

        def drain(conn: StoreConnection) -> None:
            while not stop.is_set():
                try:
                    item = work.get_nowait()
                except queue.Empty:
                    return
                sent = self._one(conn, item)
                with lock:
                    results.append(sent)
                if not conn.is_open:
                    return

        def spare() -> None:
            try:
                with self.connections.store(self.options.node, contexts, spare=True) as conn:
                    drain(conn)
            except NodeBusy:
                return  # the node's other permits are taken: the first sends alone
            except QrfarmError as exc:
                log.info("a spare association to %s failed: %s", self.options.node, exc)
            except BaseException as exc:  # noqa: BLE001 (raised again by the caller)
                errors.append(exc)

        with self.connections.store(self.options.node, contexts) as first:
            threads = [
                threading.Thread(target=spare, name=f"forward-{n}", daemon=True)
                for n in range(1, wanted)
            ]
            for thread in threads:
                thread.start()
            drain(first)
            for thread in threads:
                thread.join()
        if errors:
            raise errors[0]
        if not stop.is_set() and not work.empty():
            # Every association ended early (aborted): what is left is not sent.
            while not work.empty():
                item = work.get_nowait()
                results.append(_not_sent(item, "the association ended before it was sent", True))
        return results

    def _one(self, conn: StoreConnection, item: Outgoing) -> Sent:
        sop_class, held = item.sop_class_uid, item.transfer_syntax
        try:
            if conn.accepts(sop_class, held) and self.options.rewrite is None:
                outcome = conn.send_file(item.path, sop_class, item.sop_instance_uid, held)
                return _sent(item, item.sop_instance_uid, "", "", outcome)
            dataset = dcmread(item.path)
            names = (str(dataset.get("SOPClassUID", "")), str(dataset.get("SOPInstanceUID", "")))
            check_identity(names, sop_class, item.sop_instance_uid)
            if not conn.accepts(sop_class, held):
                target = conn.uncompressed_for(sop_class) if self.options.transcode else None
                if target is None:
                    return _not_sent(item, _refusal(conn, item, self.options.transcode), False)
                converted(dataset, target)
            if self.options.rewrite is not None:
                self.options.rewrite(dataset)
            outcome = conn.send_dataset(dataset)
            return _sent(
                item,
                str(dataset.SOPInstanceUID),
                str(dataset.get("StudyInstanceUID", "")),
                str(dataset.get("SeriesInstanceUID", "")),
                outcome,
            )
        except SyntaxRefused as exc:
            return _not_sent(item, str(exc), False)
        except QrfarmError as exc:
            return _not_sent(item, str(exc), exc.retriable)
        except Exception as exc:  # noqa: BLE001 (this instance fails, not the forward)
            # An unreadable file, a data set pydicom cannot encode: this one
            # only, named by the error's type (its text may quote values).
            log.warning("forwarding %s failed: %s", item.sop_instance_uid, type(exc).__name__)
            return _not_sent(item, f"could not be read or encoded: {type(exc).__name__}", False)


def _refusal(conn: StoreConnection, item: Outgoing, transcode: bool) -> str:
    held = UID(item.transfer_syntax)
    what = f"{held.name} ({held}) for SOP class {item.sop_class_uid}"
    accepted = sorted(
        UID(ts).name for sop_class, ts in conn.accepted if sop_class == item.sop_class_uid
    )
    if transcode:
        if not accepted:
            return f"{conn.node} refuses {what}, and every uncompressed syntax as well"
        return f"{conn.node} refuses {what}, and accepted no uncompressed syntax to convert to"
    also = f" (it accepted {', '.join(accepted)})" if accepted else ""
    return (
        f"{conn.node} refuses {what}{also}; converting is off for this destination "
        "(qrfarm node forwarding NODE --transcode, or the forward's transcode)"
    )


def _sent(item: Outgoing, sent_uid: str, study: str, series: str, outcome: StoreOutcome) -> Sent:
    return Sent(
        sop_instance_uid=item.sop_instance_uid,
        sent_sop_instance_uid=sent_uid,
        study_instance_uid=study,
        series_instance_uid=series,
        transfer_syntax=outcome.transfer_syntax,
        status=outcome.status,
        ok=outcome.ok,
        reason=None if outcome.ok else f"C-STORE answered 0x{outcome.status:04X}",
        # Out of resources (A7xx) may pass; the others are the instance's own.
        retriable=0xA700 <= outcome.status <= 0xA7FF,
    )


def _not_sent(item: Outgoing, reason: str, retriable: bool) -> Sent:
    return Sent(
        sop_instance_uid=item.sop_instance_uid,
        sent_sop_instance_uid=item.sop_instance_uid,
        study_instance_uid="",
        series_instance_uid="",
        transfer_syntax=None,
        status=None,
        ok=False,
        reason=reason,
        retriable=retriable,
    )
