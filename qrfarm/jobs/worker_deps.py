"""What a job's runner needs from the worker that runs it: associations, the
storage a C-GET writes to, the database, the policy and a dispatcher."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from qrfarm.dicom import Connection, InstanceSink, Node

from .dispatch import Dispatcher
from .expected import SpareConnections
from .policy import JobPolicy
from .web_deps import WebDeps


class GetRecorder(Protocol):
    """Stores and records the instances a C-GET brings in (the worker's storage)."""

    def sink_for(self, job_id: int, calling_ae: str) -> InstanceSink: ...


class ConnectionSource(SpareConnections, Protocol):
    """Associations as a worker holds them (pooled, under the node's permit)."""

    def query_retrieve(self, node: Node) -> AbstractContextManager[Connection]:
        """A held association with the Q/R contexts (FIND, MOVE) of both roots."""
        ...

    def get(self, node: Node, sop_classes: list[str]) -> AbstractContextManager[Connection]:
        """An association for one C-GET, with storage contexts for ``sop_classes``."""
        ...


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
    # Jobs on DICOMweb nodes (QIDO-RS, WADO-RS): where their instances go,
    # the allow-list, timeouts; without it such jobs fail, naming why.
    web: WebDeps | None = None
