"""What holds one of a node's permits in a worker's association pool
(qrfarm.workers.pool), each renewed by the pool's reaper while held."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from qrfarm.dicom import Connection, Node
from qrfarm.dicom.sending import StoreConnection

from .permits import Permit


class AssociationObserver(Protocol):
    """Told how many associations were held at once when one opened, or was refused."""

    def __call__(self, node: Node, held: int | None, rejected_at: int | None) -> None: ...


def key_of(node: Node) -> tuple[str, str, int]:
    return (node.ae_title, node.host, node.port)


@dataclass
class Pooled:
    connection: Connection
    permit: Permit
    last_used: float
    # When the permit was last known to be ours (taken or renewed).
    renewed_at: float = 0.0

    def __post_init__(self) -> None:
        self.renewed_at = self.renewed_at or time.monotonic()


@dataclass
class Held:
    """A permit for an association opened elsewhere (held()): renewed like the
    others; there is no operation of ours to stop if it is lost."""

    permit: Permit
    renewed_at: float = 0.0
    connection: None = None

    def __post_init__(self) -> None:
        self.renewed_at = self.renewed_at or time.monotonic()


@dataclass
class Sending:
    """An association that sends instances on (a forward), under its permit."""

    connection: StoreConnection
    permit: Permit
    renewed_at: float = 0.0

    def __post_init__(self) -> None:
        self.renewed_at = self.renewed_at or time.monotonic()
