"""The Celery app, configured from settings; tasks registered by name."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_process_shutdown

from qrfarm.config import Settings, broker_config
from qrfarm.jobs.dispatch import RUN_JOB, CeleryDispatcher
from qrfarm.jobs.runner import run_job
from qrfarm.observability.metrics import process_exited

from .process import current


def make_app(settings: Settings, *, follow_nodes: bool = False) -> Celery:
    """The Celery app; ``follow_nodes``: a worker that starts consuming each node's
    queue as the node is registered."""
    broker, options = broker_config(settings)
    app = Celery("qrfarm", broker=broker, set_as_current=False)
    app.conf.update(
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # A task is acknowledged only when it ended; a pool child that dies
        # puts it back; one message at a time per process.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue="qrfarm.default",
        worker_hijack_root_logger=False,
    )
    _register(app, settings)
    if follow_nodes:
        from .node_queues import FollowNodes

        app.qrfarm_settings = settings
        app.steps["consumer"].add(FollowNodes)
    return app


@worker_process_shutdown.connect
def _pool_process_exited(pid: int | None = None, **_: Any) -> None:
    if pid is not None:
        process_exited(pid)


def _register(app: Celery, settings: Settings) -> None:
    dispatcher = CeleryDispatcher(app)  # sends busy nodes' jobs back to their queue

    @app.task(name=RUN_JOB, bind=True)
    def run_job_task(self: Any, job_id: int) -> None:
        worker = current(settings, dispatcher)
        run_job(worker.deps, int(job_id), worker.owner, task_id=self.request.id)
