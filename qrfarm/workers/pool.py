"""Each worker process's associations: held open per node, reused across tasks.

A pooled association keeps its node's permit while open, is checked before
use (C-ECHO after a pause), reopened after an abort, and closed after a few
seconds idle, well before the peer's own idle timeout (Orthanc: 30 s).

Every permit this process holds is renewed, idle or in use: an operation
longer than the permit's TTL would otherwise let another worker take the
slot while this association is still open. One that cannot be renewed is let
go of: an idle association is closed; one in use has its operation stopped
(C-CANCEL, then released), which raises PermitLost in the task that ran it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from qrfarm.dicom import (
    Connection,
    Node,
    Operation,
    Root,
    StatusCategory,
    Timeouts,
    qr_contexts,
    storage_contexts,
)
from qrfarm.dicom.contexts import DEFAULT_STORAGE_SOP_CLASSES
from qrfarm.dicom.sending import StoreConnection
from qrfarm.errors import AssociationRejected, NodeBusy, PeerUnreachable, PermitLost, QrfarmError
from qrfarm.observability.metrics import ASSOCIATIONS
from qrfarm.observability.tracing import tracer

from .permit_holders import AssociationObserver, Held, Pooled, Sending, key_of
from .permits import Permit, Permits

log = logging.getLogger(__name__)

QR_CONTEXTS = qr_contexts(
    [Operation.ECHO, Operation.FIND, Operation.MOVE], [Root.STUDY, Root.PATIENT]
)
CHECK_AFTER_IDLE_S = 2.0
# An open association costs CPU even when idle: about 6 % of a core with
# pynetdicom's two reactor threads polling every millisecond, 3 % at rest
# (Connection.rest holds one of them). 20 s of that cost more than the
# 10-20 ms of opening one again, so idle ones close after 5 s.
CLOSE_AFTER_IDLE_S = 5.0
# How long a task waits for a node's permit before it gives its job back to
# the queue (for a worker holding the node's association to take).
PERMIT_WAIT_S = 1.0
# An idle association that another worker waits for is handed over (closed,
# its permit freed) at once while this process has another association in
# use (it cannot use this one meanwhile), and otherwise once it has rested
# this long: between two tasks a holder reuses its association within
# milliseconds, and taking it away then would only trade one association
# open for another (with more workers than permits the farm did little
# else, at half the throughput of one worker).
HAND_OVER_AFTER_IDLE_S = 0.3
REAP_INTERVAL_S = 0.25
# Permits are renewed this often, and at least four times per TTL: a renewal
# or two may be late (a busy process, a Redis fail-over) before one expires.
RENEW_EVERY_S = 2.0


class AssociationPool:
    """Implements the runner's ConnectionSource for one worker process."""

    def __init__(
        self,
        permits: Permits,
        calling_ae: str,
        timeouts: Timeouts,
        on_association: AssociationObserver | None = None,
    ) -> None:
        self.permits = permits
        self.on_association = on_association
        self.calling_ae = calling_ae
        self.timeouts = timeouts
        # Keyed by the peer's address, not the whole Node: its limit may change
        # (learned from its profile) while an association to it is pooled.
        self._idle: dict[tuple[str, str, int], Pooled] = {}
        # Associations in use or being opened: while there is one, the idle
        # ones cannot be used by this process and are handed over at once.
        self._associations_in_use = 0
        # The associations in use, by id, for their permits' renewal.
        self._busy: dict[int, Pooled | Sending | Held] = {}
        self._renew_every_s = min(RENEW_EVERY_S, permits.ttl_s / 4)
        self._lock = threading.Lock()
        self._reaper = threading.Thread(target=self._reap, name="pool-reaper", daemon=True)
        self._reaper.start()

    def _permit(self, node: Node) -> Permit:
        permit = self.permits.acquire(str(node), node.max_associations, PERMIT_WAIT_S)
        if permit is None:
            raise NodeBusy(f"{node} has all its {node.max_associations} association(s) in use")
        return permit

    def _open(self, node: Node, contexts: list, permit: Permit) -> Connection:  # type: ignore[type-arg]
        with tracer.start_as_current_span("dicom.associate", attributes={"dicom.peer": str(node)}):
            try:
                connection = Connection.open(
                    node, contexts, calling_ae=self.calling_ae, timeouts=self.timeouts
                )
            except BaseException as exc:
                permit.release()
                if isinstance(exc, AssociationRejected):
                    ASSOCIATIONS.labels(str(node), "rejected").inc()
                    if exc.retriable and self.on_association is not None:
                        # Refused with this many of the farm's open or opening
                        # (this one included; its permit was just given back).
                        taken = self.permits.held(str(node), node.max_associations) + 1
                        self.on_association(node, None, taken)
                elif isinstance(exc, PeerUnreachable):
                    ASSOCIATIONS.labels(str(node), "unreachable").inc()
                raise
        ASSOCIATIONS.labels(str(node), "opened").inc()
        if self.on_association is not None:
            self.on_association(node, self.permits.held(str(node), node.max_associations), None)
        return connection

    def _take(self, node: Node) -> Pooled:
        with self._lock:
            pooled = self._idle.pop(key_of(node), None)
        if pooled is not None:
            idle = time.monotonic() - pooled.last_used
            usable = (
                pooled.connection.is_open
                and pooled.connection.stopped is None
                and idle < CLOSE_AFTER_IDLE_S
                and self._still_ours(pooled)
                and (idle < CHECK_AFTER_IDLE_S or self._answers(pooled.connection))
            )
            if usable:
                return pooled
            self._discard(pooled)
        permit = self._permit(node)
        return Pooled(self._open(node, QR_CONTEXTS, permit), permit, time.monotonic())

    @staticmethod
    def _answers(connection: Connection) -> bool:
        try:
            return connection.echo().category is StatusCategory.SUCCESS
        except QrfarmError:
            return False

    @contextmanager
    def _in_use(self) -> Iterator[None]:
        with self._lock:
            self._associations_in_use += 1
        try:
            yield
        finally:
            with self._lock:
                self._associations_in_use -= 1

    @contextmanager
    def _busy_with(self, pooled: Pooled | Sending | Held) -> Iterator[None]:
        """While ``pooled`` is in use its permit is renewed by the reaper."""
        with self._lock:
            self._busy[id(pooled)] = pooled
        try:
            yield
        finally:
            with self._lock:
                self._busy.pop(id(pooled), None)

    @contextmanager
    def query_retrieve(self, node: Node) -> Iterator[Connection]:
        with self._in_use():
            pooled = self._take(node)
            try:
                with self._busy_with(pooled):
                    yield pooled.connection
            except BaseException:
                self._discard(pooled)
                raise
        pooled.last_used = time.monotonic()
        if pooled.connection.is_open and pooled.connection.stopped is None:
            pooled.connection.rest()  # no polling while it waits for the next task
            with self._lock:
                previous = self._idle.pop(key_of(node), None)
                self._idle[key_of(node)] = pooled
            if previous is not None:
                self._discard(previous)
        else:
            self._discard(pooled)

    @contextmanager
    def spare_query_retrieve(self, node: Node) -> Iterator[Connection]:
        """A second association with the Q/R contexts, only if the node has a
        permit free this moment (NodeBusy otherwise: nobody is asked to let
        go of one, nobody waits); closed after use, not pooled."""
        permit = self.permits.acquire(str(node), node.max_associations, 0.0, ask_holders=False)
        if permit is None:
            raise NodeBusy(f"{node} has no association to spare")
        with self._in_use(), self._unpooled(node, QR_CONTEXTS, permit) as connection:
            yield connection

    @contextmanager
    def get(self, node: Node, sop_classes: list[str]) -> Iterator[Connection]:
        classes = sop_classes or [str(u) for u in DEFAULT_STORAGE_SOP_CLASSES]
        contexts = qr_contexts([Operation.GET], [Root.STUDY, Root.PATIENT]) + storage_contexts(
            classes[:120]
        )
        # Our own idle association to the node would hold one of its permits
        # while this one waits for another: give it back first.
        with self._lock:
            idle = self._idle.pop(key_of(node), None)
        if idle is not None:
            self._discard(idle)
        with self._in_use(), self._unpooled(node, contexts, self._permit(node)) as connection:
            yield connection

    @contextmanager
    def held(self, node: Node) -> Iterator[None]:
        """One of ``node``'s permits for an association opened elsewhere (a
        Storage Commitment request, under the storage SCP's AE title); our
        idle association to it gives its permit back first."""
        with self._lock:
            idle = self._idle.pop(key_of(node), None)
        if idle is not None:
            self._discard(idle)
        permit = self._permit(node)
        try:
            with self._in_use(), self._busy_with(Held(permit)):
                yield
        finally:
            permit.release()

    @contextmanager
    def _unpooled(
        self,
        node: Node,
        contexts: list,  # type: ignore[type-arg]
        permit: Permit,
    ) -> Iterator[Connection]:
        """An association for one use under ``permit``: closed, and the permit
        given back, when the use ends."""
        connection = self._open(node, contexts, permit)
        try:
            with self._busy_with(Pooled(connection, permit, time.monotonic())):
                yield connection
        finally:
            with suppress(QrfarmError):
                connection.close()
            permit.release()

    @contextmanager
    def store(
        self,
        node: Node,
        contexts: list,  # type: ignore[type-arg]
        *,
        spare: bool = False,
    ) -> Iterator[StoreConnection]:
        """An association that sends instances to ``node`` (C-STORE as SCU),
        under one of the node's permits, closed after use. ``spare``: only if
        a permit is free this moment (NodeBusy otherwise, nobody waits), for
        a second or third association beside the first."""
        if spare:
            permit = self.permits.acquire(str(node), node.max_associations, 0.0, ask_holders=False)
            if permit is None:
                raise NodeBusy(f"{node} has no association to spare")
        else:
            # Our own idle Q/R association to it would hold a permit meanwhile.
            with self._lock:
                idle = self._idle.pop(key_of(node), None)
            if idle is not None:
                self._discard(idle)
            permit = self._permit(node)
        with self._in_use():
            with tracer.start_as_current_span(
                "dicom.associate", attributes={"dicom.peer": str(node)}
            ):
                try:
                    connection = StoreConnection.open(
                        node, contexts, calling_ae=self.calling_ae, timeouts=self.timeouts
                    )
                except BaseException as exc:
                    permit.release()
                    if isinstance(exc, AssociationRejected):
                        ASSOCIATIONS.labels(str(node), "rejected").inc()
                        if exc.retriable and self.on_association is not None:
                            taken = self.permits.held(str(node), node.max_associations) + 1
                            self.on_association(node, None, taken)
                    raise
            ASSOCIATIONS.labels(str(node), "opened").inc()
            if self.on_association is not None:
                held = self.permits.held(str(node), node.max_associations)
                self.on_association(node, held, None)
            try:
                with self._busy_with(Sending(connection, permit)):
                    yield connection
            finally:
                with suppress(QrfarmError):
                    connection.close()
                permit.release()

    def _discard(self, pooled: Pooled) -> None:
        with suppress(Exception):
            pooled.connection.close()
        pooled.permit.release()

    def _reap(self) -> None:
        """Renew the permits held, and close idle associations after a while,
        or sooner when another worker waits for the node's permit (a node
        with fewer permits than workers would otherwise stay held by
        associations doing nothing)."""
        renewed = time.monotonic()
        while True:
            time.sleep(min(REAP_INTERVAL_S, self._renew_every_s))
            now = time.monotonic()
            # The thread must outlive any error, and renewals must not wait on
            # the rest: without them permits in use expire under their
            # associations.
            if now - renewed >= self._renew_every_s:
                renewed = now
                try:
                    self._renew()
                except Exception:
                    log.exception("association permits not renewed")
            try:
                self._close_idle(now)
            except Exception:
                log.exception("idle associations not checked")

    def _close_idle(self, now: float) -> None:
        """Close the idle associations that rested long enough, or sooner when
        another worker waits for their node."""
        with self._lock:
            idle = list(self._idle.items())
        wanted = {key for key, pooled in idle if self.permits.wanted(pooled.permit.node)}
        with self._lock:
            hand_over_after = 0.0 if self._associations_in_use else HAND_OVER_AFTER_IDLE_S
            stale = [
                n
                for n, p in self._idle.items()
                if now - p.last_used >= (hand_over_after if n in wanted else CLOSE_AFTER_IDLE_S)
            ]
            expired = [self._idle.pop(n) for n in stale]
        for pooled in expired:
            self._discard(pooled)

    def _renew(self) -> None:
        """Renew every permit held; let go of those that are no longer ours."""
        with self._lock:
            idle = list(self._idle.values())
            busy = list(self._busy.values())
        for pooled in idle:
            if not self._still_ours(pooled):
                with self._lock:
                    key = key_of(pooled.connection.node)
                    if self._idle.get(key) is pooled:
                        del self._idle[key]
                    else:
                        continue  # taken for a task meanwhile: _take renews it itself
                self._discard(pooled)
        for in_use in busy:
            if self._still_ours(in_use):
                continue
            with self._lock:
                # Still in use (else it was closed, or pooled: it can no
                # longer be the wrong one to stop).
                if self._busy.get(id(in_use)) is in_use and in_use.connection is not None:
                    log.warning(
                        "permit for %s lost while in use: stopping its operation",
                        in_use.permit.node,
                    )
                    in_use.connection.stop(
                        PermitLost(
                            f"the association permit for {in_use.permit.node} could not be "
                            "renewed; the operation was cancelled"
                        )
                    )

    def _still_ours(self, pooled: Pooled | Sending | Held) -> bool:
        """Renew the permit; False once it is not, or may no longer be, ours."""
        now = time.monotonic()
        try:
            renewed = pooled.permit.renew()
        except Exception as exc:  # noqa: BLE001 (any store's error: Redis down, failing over)
            # Ours until the TTL may have run out since the last renewal.
            log.warning("permit for %s not renewed: %s", pooled.permit.node, exc)
            return now - pooled.renewed_at < self.permits.ttl_s - self._renew_every_s
        if renewed:
            pooled.renewed_at = now
        return renewed

    def close(self) -> None:
        with self._lock:
            idle, self._idle = list(self._idle.values()), {}
        for pooled in idle:
            self._discard(pooled)
