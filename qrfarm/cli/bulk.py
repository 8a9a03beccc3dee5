"""``qrfarm bulk``: cancel, retry or re-prioritise every job a filter names,
through qrfarm.client.Client (the console and the API do the same)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Annotated

import typer

from ..client import Client
from ..config import Settings
from ..jobs.bulk import BulkResult, JobFilter
from ..models import JobKind, JobState
from .common import EXIT_OK, app, out, print_json, run

bulk_app = typer.Typer(help="Act on every job a filter names.", no_args_is_help=True)
app.add_typer(bulk_app, name="bulk")

NodeOpt = Annotated[str | None, typer.Option("--node", help="Jobs of this node.")]
StateOpt = Annotated[JobState | None, typer.Option("--state", help="Jobs in this state.")]
KindOpt = Annotated[JobKind | None, typer.Option("--kind", help="Jobs of this kind.")]
BatchOpt = Annotated[int | None, typer.Option("--batch", help="Jobs of this batch.")]
AfterOpt = Annotated[dt.datetime | None, typer.Option("--since", help="Created at or after (UTC).")]
BeforeOpt = Annotated[dt.datetime | None, typer.Option("--until", help="Created before (UTC).")]
IdsOpt = Annotated[list[int] | None, typer.Option("--job", help="This job (repeatable).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document, nothing else.")]


def _filter(
    node: str | None,
    state: JobState | None,
    kind: JobKind | None,
    batch: int | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    job: list[int] | None,
) -> JobFilter:
    return JobFilter(
        node=node,
        state=state,
        kind=kind,
        batch_id=batch,
        created_after=since,
        created_before=until,
        job_ids=tuple(job) if job else None,
    )


def _report(verb: str, result: BulkResult, as_json: bool) -> int:
    if as_json:
        print_json({"touched": result.touched, "job_ids": result.job_ids})
    else:
        shown = ", ".join(map(str, result.job_ids[:20])) + (" ..." if result.touched > 20 else "")
        out.print(f"{verb} {result.touched} job(s){': ' + shown if shown else ''}", highlight=False)
    return EXIT_OK


def _run(
    flt: JobFilter, verb: str, act: Callable[[Client, JobFilter], BulkResult], as_json: bool
) -> None:
    """Act on every job ``flt`` names through the Client, and report it."""

    def action(settings: Settings) -> int:
        client = Client.from_settings(settings)
        try:
            return _report(verb, act(client, flt), as_json)
        finally:
            client.close()

    run(action)


@bulk_app.command("cancel")
def bulk_cancel(
    node: NodeOpt = None,
    state: StateOpt = None,
    kind: KindOpt = None,
    batch: BatchOpt = None,
    since: AfterOpt = None,
    until: BeforeOpt = None,
    job: IdsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cancel every matching job not yet ended (queued: at once; running: C-CANCEL)."""
    flt = _filter(node, state, kind, batch, since, until, job)
    _run(flt, "cancelled", Client.bulk_cancel, as_json)


@bulk_app.command("retry")
def bulk_retry(
    node: NodeOpt = None,
    state: StateOpt = None,
    kind: KindOpt = None,
    batch: BatchOpt = None,
    since: AfterOpt = None,
    until: BeforeOpt = None,
    job: IdsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Retry every matching partial or failed job (a partial retrieve asks only for
    what is missing)."""
    flt = _filter(node, state, kind, batch, since, until, job)
    _run(flt, "queued again", Client.bulk_retry, as_json)


@bulk_app.command("prioritise")
def bulk_prioritise(
    priority: Annotated[
        int,
        typer.Argument(
            min=-100, max=100, help="The new priority: 50 and above urgent, below 0 bulk."
        ),
    ],
    node: NodeOpt = None,
    state: StateOpt = None,
    kind: KindOpt = None,
    batch: BatchOpt = None,
    since: AfterOpt = None,
    until: BeforeOpt = None,
    job: IdsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Give every matching job not yet ended this priority (queued ones move lanes)."""
    flt = _filter(node, state, kind, batch, since, until, job)
    _run(
        flt, f"set to {priority}:", lambda client, flt: client.reprioritise(flt, priority), as_json
    )
