"""What a worker gives the runner for jobs on DICOMweb nodes (qrfarm.jobs.web_runner)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from qrfarm.dicomweb import WebTimeouts
from qrfarm.storage import InstanceStorage


class WebSlots(Protocol):
    """Farm-wide slots per DICOMweb node (qrfarm.workers.web_slots)."""

    def hold(self, node_id: int, limit: int) -> AbstractContextManager[threading.Event]:
        """One of the node's ``limit`` slots, or NodeBusy; the Event is set if
        the slot is lost while held."""
        ...


@dataclass(frozen=True)
class WebDeps:
    """What a worker gives the DICOMweb runner: where instances go, the
    outbound allow-list, timeouts and bounds."""

    storage: InstanceStorage
    check_target: Callable[[str], None] | None = None
    timeouts: WebTimeouts = field(default_factory=WebTimeouts)
    max_instance_bytes: int = 8 << 30
    # A retrieve of one resource (study, series, instance) ends by then.
    resource_deadline_s: float = 3600.0
    # The farm's storage SCP: the one destination a move on a DICOMweb node
    # can have (WADO-RS brings the instances to the farm, nowhere else).
    farm_ae: str | None = None
    # At most the node's max_associations of its DICOMweb jobs at once across
    # the farm; None: no bound (a test runner alone).
    slots: WebSlots | None = None
