"""The farm: its database and broker, workers, the scheduler (its loop: qrfarm.scheduler;
nodes: qrfarm.cli.nodes; jobs and their state: qrfarm.cli.jobs)."""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Annotated, Any

import typer
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from ..config import Settings, broker_config
from ..errors import DatabaseNotReady, UnknownNode
from ..jobs.dispatch import Dispatcher, celery_dispatcher, node_queue
from ..jobs.submit import SubmitRules
from ..models import NodeRecord, make_engine, session_factory
from ..models.migrate import is_current
from ..notify.delivery import DeliveryPolicy
from ..notify.signing import new_secret
from ..observability import metrics
from ..scheduler import SchedulerSetup
from ..scheduler import run as run_scheduler
from .common import (
    EXIT_OK,
    app,
    run,
)
from .probe import heartbeat_path
from .supervisor import child_command

log = logging.getLogger(__name__)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document, nothing else.")]


def database(settings: Settings, **engine_options: Any) -> tuple[Engine, sessionmaker[Session]]:
    """The database of record, checked to be at the latest schema."""
    engine = make_engine(settings.database_url, **engine_options)
    if not is_current(engine):
        raise DatabaseNotReady(
            "the database is not at the latest schema: run `qrfarm db upgrade` first"
        )
    return engine, session_factory(engine)


def dispatcher(settings: Settings) -> Dispatcher:
    broker, options = broker_config(settings)
    return celery_dispatcher(broker, options)


@app.command()
def worker(
    node: Annotated[
        list[str] | None, typer.Option("--node", help="Serve this node (repeatable; default all).")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Pool processes.")] = 2,
) -> None:
    """Run a Celery worker for the given nodes' queues (without --node: every node's,
    following the nodes registered later too)."""
    from ..workers.app import make_app

    def action(settings: Settings) -> int:
        engine, sessions = database(settings)
        with sessions() as session:
            names = list(session.scalars(select(NodeRecord.name)))
        engine.dispose()
        unknown = sorted(set(node or []) - set(names))
        if unknown:
            raise UnknownNode(f"node(s) not registered: {', '.join(unknown)}")
        # Without --node, the nodes known now, and the others as they come.
        queues = ",".join([node_queue(name) for name in node or names] or ["qrfarm.default"])
        if settings.metrics_port is not None:
            _serve_worker_metrics(settings)
        celery = make_app(settings, follow_nodes=not node)
        celery.worker_main(
            [
                "worker",
                "--queues",
                queues,
                "--concurrency",
                str(concurrency),
                "--pool",
                "prefork",
                "--hostname",
                f"qrfarm-{socket.gethostname()}-{os.getpid()}@%h",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ]
        )
        return EXIT_OK

    run(action, service="worker")


def _serve_worker_metrics(settings: Settings) -> None:
    """The pool processes' metrics, summed, from this (the main) process.

    prometheus_client picks multiprocess mode when it is imported, so the
    process starts again with PROMETHEUS_MULTIPROC_DIR set, unless it is.
    """
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics.use_multiprocess_folder(settings.data_dir / "metrics", "worker")
        os.execv(sys.executable, child_command(sys.argv[1:]))  # noqa: S606
    assert settings.metrics_port is not None
    metrics.serve(settings.metrics_port, settings.metrics_host)


@app.command()
def scheduler(
    once: Annotated[bool, typer.Option("--once", help="One round, then exit.")] = False,
) -> None:
    """Re-send due retries and lost jobs, finalize jobs whose worker died,
    advance prefetches, and deliver webhooks."""
    from ..workers.process import policy_from

    def action(settings: Settings) -> int:
        engine, sessions = database(settings)
        setup = SchedulerSetup(
            sessions=sessions,
            dispatcher=dispatcher(settings),
            policy=policy_from(settings),
            rules=SubmitRules.from_settings(settings),
            interval_s=settings.scheduler_interval_s,
            audit_retention_days=settings.audit_retention_days,
            heartbeat=heartbeat_path(settings),
            deliveries=DeliveryPolicy.from_settings(settings),
        )
        if settings.metrics_port is not None and not once:
            metrics.serve(settings.metrics_port, settings.metrics_host)
        run_scheduler(setup, once=once)
        engine.dispose()
        return EXIT_OK

    run(action, service="scheduler")


@app.command("webhook-secret")
def webhook_secret() -> None:
    """Print a new webhook signing secret (for QRFARM_WEBHOOK_SECRET, and the receivers)."""
    typer.echo(new_secret())


__all__ = ["database", "dispatcher"]
