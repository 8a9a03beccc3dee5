"""What each worker process holds: engine, sessions, associations, storage.

Made in the process that uses it, on its first task: nothing from a parent
survives a fork (engines, sockets, threads), and worker_process_init stays
quick.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.config import Settings, permits_redis_url
from qrfarm.delivery.commitment import CommitmentSettings
from qrfarm.delivery.forward_run import ForwardDeps, forward_runner, verify_by_find
from qrfarm.delivery.stow_transport import WebDelivery, stow_factory, verify_by_transport
from qrfarm.delivery.transports import DimseTransport, Transport, TransportOptions
from qrfarm.delivery.verification import DeliveryVerifier
from qrfarm.dicom import Node, Timeouts
from qrfarm.dicomweb import WebTimeouts
from qrfarm.jobs import profiles
from qrfarm.jobs.dispatch import Dispatcher
from qrfarm.jobs.policy import JobPolicy
from qrfarm.jobs.runner import RunnerDeps
from qrfarm.jobs.web_deps import WebDeps
from qrfarm.models import JobKind, make_engine, session_factory
from qrfarm.storage import InstanceStorage

from .get_store import GetStore
from .permits import FilePermits, Permits, RedisPermits
from .pool import AssociationPool
from .web_slots import WebSlots

log = logging.getLogger(__name__)


def policy_from(settings: Settings) -> JobPolicy:
    return JobPolicy(
        max_attempts=settings.max_attempts,
        backoff_base_s=settings.backoff_base_s,
        backoff_cap_s=settings.backoff_cap_s,
        lease_ttl_s=settings.lease_ttl_s,
        reconcile_grace_s=settings.reconcile_grace_s,
        redispatch_after_s=settings.redispatch_after_s,
        retry_partial=settings.retry_partial,
        limit_probe_after_s=settings.association_probe_after_s,
        late_window_s=settings.move_late_window_s,
    )


def permits_from(settings: Settings) -> Permits:
    url = permits_redis_url(settings)
    if url:
        return RedisPermits(url, ttl_s=settings.permit_ttl_s)
    return FilePermits(settings.data_dir / "permits")


def runner_deps(
    settings: Settings,
    sessions: sessionmaker[Session],
    pool: AssociationPool,
    dispatcher: Dispatcher | None = None,
) -> RunnerDeps:
    """What the runner needs, as a worker process has it."""
    return RunnerDeps(
        sessions=sessions,
        connections=pool,
        get_recorder=GetStore(
            sessions, InstanceStorage(settings.storage_root, fsync=settings.scp_fsync)
        ),
        calling_ae=settings.ae_title,
        policy=policy_from(settings),
        dispatcher=dispatcher,
        verify_delivery=delivery_verifier(settings),
        web=web_deps(settings, pool),
        kind_runners={JobKind.FORWARD: forward_runner(forward_deps(settings, pool, sessions))},
    )


def forward_deps(
    settings: Settings, pool: AssociationPool, sessions: sessionmaker[Session]
) -> ForwardDeps:
    """What forward jobs need of this worker: its files, its associations, and
    STOW-RS (checked by QIDO-RS) for destinations reached by DICOMweb."""

    def dimse(options: TransportOptions) -> Transport:
        return DimseTransport(pool, options)

    web = WebDelivery(
        sessions,
        settings.check_target,
        WebTimeouts(settings.connect_timeout, settings.network_timeout),
    )
    return ForwardDeps(
        storage_root=settings.storage_root,
        transports={"dimse": dimse, "dicomweb": stow_factory(web)},
        associations=settings.forward_associations,
        verify=verify_by_transport(web, verify_by_find),
    )


def web_deps(settings: Settings, pool: AssociationPool) -> WebDeps:
    """Jobs on DICOMweb nodes: the farm's storage, the outbound allow-list
    (checked again before each job connects), the DIMSE timeouts' HTTP peers."""
    return WebDeps(
        storage=InstanceStorage(settings.storage_root, fsync=settings.scp_fsync),
        check_target=settings.check_target,
        timeouts=WebTimeouts(settings.connect_timeout, settings.network_timeout),
        max_instance_bytes=settings.scp_max_instance_bytes,
        farm_ae=settings.scp_ae_title,
        slots=WebSlots(pool.permits),
    )


def delivery_verifier(settings: Settings) -> DeliveryVerifier:
    """Verifies moves to other nodes; Storage Commitment reports come to the
    storage SCP, so the request is sent under its AE title."""
    return DeliveryVerifier(
        CommitmentSettings(
            calling_ae=settings.scp_ae_title,
            report_timeout_s=settings.commitment_report_timeout_s,
            recheck_after_s=settings.commitment_recheck_after_s,
            timeouts=Timeouts(
                connect=settings.connect_timeout,
                acse=settings.acse_timeout,
                dimse=settings.dimse_timeout,
                network=settings.network_timeout,
            ),
        )
    )


@dataclass(frozen=True)
class ProfileRecorder:
    """Writes what an association attempt showed of its node into the node's profile."""

    sessions: sessionmaker[Session]
    # A learned limit's quiet period (the settings'), for a refusal seen now.
    probe_after_s: float = profiles.PROBE_AFTER_S

    def __call__(self, node: Node, held: int | None, rejected_at: int | None) -> None:
        try:
            with self.sessions() as session, session.begin():
                node_id = profiles.node_id_of(session, node.ae_title, node.host, node.port)
                if node_id is not None:
                    profiles.observe_associations(
                        session,
                        node_id,
                        held=held,
                        rejected_at=rejected_at,
                        probe_after_s=self.probe_after_s,
                    )
        except SQLAlchemyError as exc:
            # Learning is a side matter: never fail the association for it.
            log.warning("profile of %s not written: %s", node, exc)


@dataclass
class WorkerProcess:
    pid: int
    engine: Engine
    deps: RunnerDeps
    pool: AssociationPool

    @property
    def owner(self) -> str:
        return f"{socket.gethostname()}:{self.pid}"


_current: WorkerProcess | None = None
_lock = threading.Lock()


def current(settings: Settings, dispatcher: Dispatcher) -> WorkerProcess:
    """This process's worker state, made on first use (and again after a fork);
    ``dispatcher`` sends jobs back to their queue (the worker's broker)."""
    global _current
    with _lock:
        if _current is None or _current.pid != os.getpid():
            engine = make_engine(settings.database_url)
            sessions = session_factory(engine)
            timeouts = Timeouts(
                connect=settings.connect_timeout,
                acse=settings.acse_timeout,
                dimse=settings.dimse_timeout,
                network=settings.network_timeout,
            )
            pool = AssociationPool(
                permits_from(settings),
                settings.ae_title,
                timeouts,
                on_association=ProfileRecorder(sessions, settings.association_probe_after_s),
            )
            deps = runner_deps(settings, sessions, pool, dispatcher)
            _current = WorkerProcess(os.getpid(), engine, deps, pool)
        return _current
