"""What a job's runner needs from the worker that runs it: associations, the
storage a C-GET writes to, the database, the policy and a dispatcher."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.orm import Session, sessionmaker

from qrfarm.dicom import Connection, InstanceSink, Node
from qrfarm.models import JobKind

from .dispatch import Dispatcher
from .expected import SpareConnections
from .policy import JobPolicy

if TYPE_CHECKING:
    from .leases import Claim
    from .watch import JobWatch
from .web_deps import WebDeps


class GetRecorder(Protocol):
    """Stores and records the instances a C-GET brings in (the worker's storage)."""

    def sink_for(self, job_id: int, calling_ae: str) -> InstanceSink: ...


class DeliveryVerifier(Protocol):
    """Verifies at a move's destination node what arrived there and ends the
    job (qrfarm.delivery.verification); the worker gives the runner one."""

    def __call__(self, deps: RunnerDeps, taken: Claim) -> None: ...

    def alongside(self, deps: RunnerDeps, taken: Claim) -> AbstractContextManager[None]:
        """Around the C-MOVE of a move to another node: confirms at the
        destination what has arrived while the move runs."""
        ...


class ConnectionSource(SpareConnections, Protocol):
    """Associations as a worker holds them (pooled, under the node's permit)."""

    def query_retrieve(self, node: Node) -> AbstractContextManager[Connection]:
        """A held association with the Q/R contexts (FIND, MOVE) of both roots."""
        ...

    def get(self, node: Node, sop_classes: list[str]) -> AbstractContextManager[Connection]:
        """An association for one C-GET, with storage contexts for ``sop_classes``."""
        ...

    def held(self, node: Node) -> AbstractContextManager[None]:
        """One of the node's permits, for an association opened elsewhere."""
        ...


class KindRunner(Protocol):
    """Runs one attempt of a job of a kind the runner does not know itself
    (a forward: qrfarm.delivery), claimed, with its node and its watch."""

    def __call__(self, deps: RunnerDeps, taken: Claim, node: Node, watch: JobWatch) -> None: ...


@dataclass
class RunnerDeps:
    sessions: sessionmaker[Session]
    connections: ConnectionSource
    get_recorder: GetRecorder
    calling_ae: str
    policy: JobPolicy
    # Sends a job's message again, to the back of its node's queue, where a
    # worker holding the node's association takes it. Without one, a job
    # that waited in vain for a permit is sent by the scheduler a little later.
    dispatcher: Dispatcher | None = None
    # Ends a move to another node once its destination confirmed what arrived;
    # without one, such a move fails after its C-MOVE (nothing can verify it).
    verify_delivery: DeliveryVerifier | None = None
    # Jobs on DICOMweb nodes (QIDO-RS, WADO-RS): where their instances go,
    # the allow-list, timeouts; without it such jobs fail, naming why.
    web: WebDeps | None = None
    # The runners of other kinds of job, as the worker wires them in (jobs/
    # never imports what runs them).
    kind_runners: Mapping[JobKind, KindRunner] = field(default_factory=dict)
