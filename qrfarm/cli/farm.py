"""The farm: nodes, queued jobs and their state, workers, the scheduler."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from typing import Annotated, Any

import typer
from rich.table import Table
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from ..config import Settings, broker_config
from ..dicom import Connection, Node, Operation, StatusCategory, qr_contexts
from ..errors import DatabaseNotReady, UnknownNode
from ..jobs import control, prefetch, profiles
from ..jobs.dispatch import Dispatcher, celery_dispatcher, node_queue
from ..jobs.nodes import NodeSpec, upsert_node
from ..jobs.queries import find_results, job_summary, list_jobs
from ..jobs.submit import JobRequest, SubmitRules, submit
from ..jobs.sweeper import sweep
from ..jobs.webhooks import DeliveryPolicy, deliver_due
from ..models import ENDED_STATES, JobState, NodeRecord, make_engine, session_factory
from ..models.migrate import is_current
from ..observability import metrics
from .common import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK, EXIT_WARNING, app, err, out, run
from .probe import heartbeat_path
from .supervisor import child_command

log = logging.getLogger(__name__)

node_app = typer.Typer(help="PACS nodes the farm knows.", no_args_is_help=True)
app.add_typer(node_app, name="node")

EXIT_FOR_STATE = {
    "completed": EXIT_OK,
    "partial": EXIT_WARNING,
    "failed": EXIT_FAILURE,
    "cancelled": EXIT_FAILURE,
}


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


@node_app.command("add")
def node_add(
    name: Annotated[str, typer.Argument(help="A name for the node.")],
    address: Annotated[str, typer.Argument(help="AET@host:port")],
    max_associations: Annotated[int, typer.Option(help="Simultaneous associations.")] = 4,
    store_ae: Annotated[
        list[str] | None,
        typer.Option("--store-ae", help="Calling AE title its C-STOREs come from (repeatable)."),
    ] = None,
    store_host: Annotated[
        list[str] | None,
        typer.Option(
            "--store-host",
            help="Host its C-STOREs come from: address, CIDR network or name (repeatable; "
            "default: its own host).",
        ),
    ] = None,
    any_host: Annotated[
        bool,
        typer.Option(
            "--any-host",
            help="Admit its AE titles from any address (a PACS behind NAT): no host check.",
        ),
    ] = False,
) -> None:
    """Register (or change) a PACS node."""

    def action(settings: Settings) -> int:
        node = Node.parse(address, max_associations=max_associations)
        settings.check_target(node.host)
        engine, sessions = database(settings)
        with sessions() as session, session.begin():
            upsert_node(
                session,
                NodeSpec(
                    name,
                    node.ae_title,
                    node.host,
                    node.port,
                    max_associations,
                    list(store_ae or []),
                    store_hosts=list(store_host or []),
                    any_store_host=any_host,
                ),
            )
        engine.dispose()
        out.print(f"node {name}: {node}", highlight=False)
        return EXIT_OK

    run(action)


@node_app.command("show")
def node_show(name: Annotated[str, typer.Argument(help="The node's name.")]) -> None:
    """A node and its behaviour profile, as the farm has seen it."""

    def action(settings: Settings) -> int:
        engine, sessions = database(settings)
        with sessions() as session:
            row = session.scalar(select(NodeRecord).where(NodeRecord.name == name))
            if row is None:
                raise UnknownNode(f"node {name!r} is not registered")
            profile = profiles.profile(session, row.id)
            address = f"{row.ae_title}@{row.host}:{row.port}"
            limit = row.max_associations
        engine.dispose()
        out.print(f"{name}: {address}, at most {limit} association(s)", highlight=False)
        table = Table("behaviour", "seen", "observations")
        words = {True: "yes", False: "no", None: "not seen yet"}
        for trait in profiles.TRAITS:
            counts = profile["observations"].get(trait, {})
            table.add_row(
                trait.replace("_", " "),
                words[profile[trait]],
                f"{counts.get('yes', 0)} yes, {counts.get('no', 0)} no" if counts else "",
            )
        rejects = profile["rejects_above_associations"]
        table.add_row(
            "rejects above associations",
            "not seen yet" if rejects is None else str(rejects),
            f"held {profile['max_associations_held']} at once",
        )
        out.print(table)
        return EXIT_OK

    run(action)


@node_app.command("list")
def node_list() -> None:
    """The registered nodes."""

    def action(settings: Settings) -> int:
        engine, sessions = database(settings)
        table = Table(
            "name", "AE title", "host", "port", "max assoc.", "store AE titles", "store hosts"
        )
        with sessions() as session:
            for row in session.scalars(select(NodeRecord).order_by(NodeRecord.name)):
                table.add_row(
                    row.name,
                    row.ae_title,
                    row.host,
                    str(row.port),
                    str(row.max_associations),
                    ", ".join(row.store_ae_titles or []),
                    "any" if row.any_store_host else ", ".join(row.store_hosts or [row.host]),
                )
        engine.dispose()
        out.print(table)
        return EXIT_OK

    run(action)


@node_app.command("echo")
def node_echo(name: Annotated[str, typer.Argument(help="The node's name.")]) -> None:
    """C-ECHO a registered node."""

    def action(settings: Settings) -> int:
        engine, sessions = database(settings)
        with sessions() as session:
            row = session.scalar(select(NodeRecord).where(NodeRecord.name == name))
        engine.dispose()
        if row is None:
            raise UnknownNode(f"node {name!r} is not registered")
        node = Node(row.ae_title, row.host, row.port)
        settings.check_target(node.host)
        with Connection.open(
            node, qr_contexts([Operation.ECHO]), calling_ae=settings.ae_title
        ) as conn:
            response = conn.echo()
        out.print(f"{name} ({node}): {response.summary()}", highlight=False)
        return EXIT_OK if response.category is StatusCategory.SUCCESS else EXIT_FAILURE

    run(action)


def follow(sessions: sessionmaker[Session], job_id: int, *, timeout: float | None = None) -> str:
    """Show a job's progress until it ends; returns its final state."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    deadline = None if timeout is None else time.monotonic() + timeout
    with Progress(
        TextColumn("job {task.fields[job]} {task.fields[state]}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task("job", total=None, job=job_id, state="queued")
        while True:
            with sessions() as session:
                summary = job_summary(session, job_id, responses=False)
            p = summary["progress"]
            done = sum(p[k] or 0 for k in ("completed", "failed", "warning"))
            total = done + (p["remaining"] or 0) if p["remaining"] is not None else None
            progress.update(task, state=summary["state"], completed=done, total=total)
            if summary["state"] in ENDED_STATES:
                return str(summary["state"])
            if deadline is not None and time.monotonic() > deadline:
                return str(summary["state"])
            time.sleep(0.25)


def print_job(summary: dict[str, Any]) -> None:
    if summary["kind"] == "find":
        out.print(
            f"job {summary['id']} find on {summary['node']}: [bold]{summary['state']}[/],"
            f" {summary['answers']} answer(s)"
            + (f"  {summary['error']}" if summary["error"] else ""),
            highlight=False,
        )
        _print_note(summary)
        return
    reported = summary["reported"]
    out.print(
        f"job {summary['id']} {summary['kind']} on {summary['node']}: [bold]{summary['state']}[/]"
        f"  expected {summary['expected']}, reported {reported['completed']} completed /"
        f" {reported['failed']} failed / {reported['warning']} warning,"
        f" recorded {summary['recorded']}",
        highlight=False,
    )
    if summary["error"]:
        out.print(f"  {summary['error']}", highlight=False)
    for uid in summary["missing_uids"][:20]:
        out.print(f"  missing: {uid}", highlight=False)
    if len(summary["missing_uids"]) > 20:
        out.print(f"  ... and {len(summary['missing_uids']) - 20} more missing", highlight=False)
    _print_note(summary)


def _print_note(summary: dict[str, Any]) -> None:
    if summary.get("note"):
        out.print(f"  [yellow]{summary['note']}[/]", highlight=False)


@app.command("job")
def job_show(
    job_id: Annotated[int, typer.Argument(help="The job's id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Everything, as JSON.")] = False,
    results: Annotated[bool, typer.Option("--results", help="C-FIND answers (JSON).")] = False,
) -> None:
    """A job: state, counts, every response of every attempt, missing UIDs."""

    def action(settings: Settings) -> int:
        engine, sessions = database(settings)
        with sessions() as session:
            summary = job_summary(session, job_id)
            answers = find_results(session, job_id) if results else None
        engine.dispose()
        if as_json or results:
            print(json.dumps(answers if results else summary, indent=2))
        else:
            print_job(summary)
            for attempt in summary["attempts"]:
                out.print(
                    f"  attempt {attempt['number']} on {attempt['worker']}:"
                    f" {attempt['outcome'] or 'running'}"
                    + (f" ({attempt['error']})" if attempt["error"] else ""),
                    highlight=False,
                )
                for response in attempt["responses"][-3:]:
                    out.print(
                        f"    {response['status']} {response['category']}"
                        f" completed={response['completed']} failed={response['failed']}",
                        highlight=False,
                    )
        return EXIT_FOR_STATE.get(summary["state"], EXIT_OK)

    run(action)


@app.command("jobs")
def jobs_list(
    state: Annotated[JobState | None, typer.Option(help="Only jobs in this state.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 50,
) -> None:
    """The latest jobs."""

    def action(settings: Settings) -> int:
        engine, sessions = database(settings)
        with sessions() as session:
            rows = list_jobs(session, state=state, limit=limit)
        engine.dispose()
        table = Table("id", "kind", "node", "state", "expected", "recorded", "error")
        for row in rows:
            table.add_row(
                str(row["id"]),
                row["kind"],
                row["node"],
                row["state"],
                str(row["expected"] if row["expected"] is not None else "-"),
                str(row["recorded"]),
                (row["error"] or "")[:60],
            )
        out.print(table)
        return EXIT_OK

    run(action)


@app.command("cancel")
def job_cancel(job_id: Annotated[int, typer.Argument(help="The job's id.")]) -> None:
    """Cancel a job: a queued one ends at once, a running one gets C-CANCEL."""

    def action(settings: Settings) -> int:
        engine, sessions = database(settings)
        state = control.cancel(sessions, job_id)
        engine.dispose()
        out.print(f"job {job_id}: {state.value}, cancel asked for", highlight=False)
        return EXIT_OK

    run(action)


@app.command("retry")
def job_retry(
    job_id: Annotated[int, typer.Argument(help="The job's id.")],
    wait: Annotated[bool, typer.Option("--wait", help="Follow it to its end.")] = False,
) -> None:
    """Retry a partial or failed job; a partial retrieve asks only for what is missing."""

    def action(settings: Settings) -> int:
        engine, sessions = database(settings)
        control.retry(sessions, job_id, dispatcher(settings), settings.max_attempts)
        out.print(f"job {job_id} queued again", highlight=False)
        code = EXIT_OK
        if wait:
            state = follow(sessions, job_id)
            with sessions() as session:
                print_job(job_summary(session, job_id, responses=False))
            code = EXIT_FOR_STATE[state]
        engine.dispose()
        return code

    run(action)


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
        send = dispatcher(settings)
        policy = policy_from(settings)
        rules = SubmitRules.from_settings(settings)
        stop = threading.Event()
        deliveries = _start_webhook_delivery(settings, sessions, stop, once)
        if settings.metrics_port is not None and not once:
            metrics.serve(settings.metrics_port, settings.metrics_host)
        heartbeat = heartbeat_path(settings)
        heartbeat.parent.mkdir(parents=True, exist_ok=True)
        while True:
            heartbeat.touch()  # what `qrfarm probe scheduler` reads
            report = sweep(sessions, send, policy)
            if report.dispatched or report.finalized:
                log.info("sweep: sent %s, finalized %s", report.dispatched, report.finalized)
            if report.pending:
                log.warning("sweep: broker unreachable, %d job(s) pending", len(report.pending))
            changed = prefetch.advance_all(sessions, send, rules)
            if changed:
                log.info("prefetches advanced: %s", changed)
            if once or stop.wait(settings.scheduler_interval_s):
                break
        stop.set()
        if deliveries is not None:
            deliveries.join()
        engine.dispose()
        return EXIT_OK

    run(action, service="scheduler")


def _start_webhook_delivery(
    settings: Settings, sessions: sessionmaker[Session], stop: threading.Event, once: bool
) -> threading.Thread | None:
    """Deliver webhooks on their own thread: a slow receiver never delays a sweep."""
    policy = DeliveryPolicy.from_settings(settings)
    if policy is None:
        return None

    def loop() -> None:
        while True:
            try:
                report = deliver_due(sessions, policy)
                if report.delivered or report.gave_up:
                    log.info("webhooks: delivered %s, gave up %s", report.delivered, report.gave_up)
            except Exception:
                # A database hiccup: the outbox keeps everything; try next round.
                log.exception("webhook delivery round failed")
            if once or stop.wait(min(1.0, settings.scheduler_interval_s)):
                return

    thread = threading.Thread(target=loop, name="webhooks", daemon=True)
    thread.start()
    return thread


def queue_job(settings: Settings, request: JobRequest, wait: bool) -> int:
    """Submit a job; with ``wait``, follow it to its end. Returns the exit status."""
    engine, sessions = database(settings)
    job_id = submit(sessions, request, dispatcher(settings), SubmitRules.from_settings(settings))
    out.print(f"job {job_id} queued", highlight=False)
    with sessions() as session:
        note = job_summary(session, job_id, responses=False)["note"]
    if note:
        err.print(f"[yellow]job {job_id}: {note}[/]", highlight=False)
    code = EXIT_OK
    if wait:
        state = follow(sessions, job_id)
        with sessions() as session:
            summary = job_summary(session, job_id, responses=False)
        print_job(summary)
        code = EXIT_FOR_STATE[state]
    engine.dispose()
    return code


__all__ = ["EXIT_BAD_INPUT", "database", "dispatcher", "follow", "print_job", "queue_job"]
