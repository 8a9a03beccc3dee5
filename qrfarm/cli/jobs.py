"""Queued jobs: submitting one from find/get/move, following it, showing, listing,
cancelling and retrying jobs, all through qrfarm.client.Client (the producer's
API, which the REST API's console uses too). With ``--json`` each prints one
JSON document."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from ..client import Client
from ..config import Settings
from ..jobs.submit import JobRequest
from ..models import JobKind, JobState
from .audit import note_job
from .common import EXIT_FAILURE, EXIT_OK, EXIT_WARNING, app, err, out, print_json, run
from .farm import JsonOpt

EXIT_FOR_STATE = {
    "completed": EXIT_OK,
    "partial": EXIT_WARNING,
    "failed": EXIT_FAILURE,
    "cancelled": EXIT_FAILURE,
}
NOT_REPORTED = "not reported"


def follow(client: Client, job_id: int, *, timeout: float | None = None) -> str:
    """Show a job's progress (on stderr) until it ends; returns its final state."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    state = "queued"
    with Progress(
        TextColumn("job {task.fields[job]} {task.fields[state]}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task("job", total=None, job=job_id, state=state)
        for summary in client.progress(job_id, timeout=timeout):
            p = summary["progress"]
            done = sum(p[k] or 0 for k in ("completed", "failed", "warning"))
            total = done + (p["remaining"] or 0) if p["remaining"] is not None else None
            state = str(summary["state"])
            progress.update(task, state=state, completed=done, total=total)
    return state


def count_text(value: int | None) -> str:
    """A count the PACS may leave out of its final response: None is not 0."""
    return NOT_REPORTED if value is None else str(value)


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
    if all(reported[k] is None for k in ("completed", "failed", "warning")):
        said = "counts not reported by the PACS"
    else:
        said = (
            f"reported {count_text(reported['completed'])} completed /"
            f" {count_text(reported['failed'])} failed / {count_text(reported['warning'])} warning"
        )
    expected = "not known" if summary["expected"] is None else summary["expected"]
    out.print(
        f"job {summary['id']} {summary['kind']} on {summary['node']}: [bold]{summary['state']}[/]"
        f"  expected {expected}, {said}, recorded {summary['recorded']}",
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
    if summary.get("wait_reason"):
        out.print(f"  waits: {summary['wait_reason']}", highlight=False)


def _print_attempts(summary: dict[str, Any]) -> None:
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
                f" completed={count_text(response['completed'])}"
                f" failed={count_text(response['failed'])}",
                highlight=False,
            )


@app.command("job")
def job_show(
    job_id: Annotated[int, typer.Argument(help="The job's id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Everything, as JSON.")] = False,
    results: Annotated[bool, typer.Option("--results", help="C-FIND answers (JSON).")] = False,
) -> None:
    """A job: state, counts, every response of every attempt, missing UIDs."""

    def action(settings: Settings) -> int:
        client = Client.from_settings(settings)
        summary = client.status(job_id, responses=True)
        answers = client.results(job_id) if results else None
        note_job(client.sessions, "job.results.read" if results else "job.read", "R", job_id)
        client.close()
        if as_json or results:
            print_json(answers if results else summary)
        else:
            print_job(summary)
            _print_attempts(summary)
        return EXIT_FOR_STATE.get(summary["state"], EXIT_OK)

    run(action)


@app.command("jobs")
def jobs_list(
    state: Annotated[JobState | None, typer.Option(help="Only jobs in this state.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """The latest jobs."""

    def action(settings: Settings) -> int:
        client = Client.from_settings(settings)
        rows = client.jobs(state=state, limit=limit)
        client.close()
        if as_json:
            print_json(rows)
            return EXIT_OK
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
        client = Client.from_settings(settings)
        state = client.cancel(job_id)
        note_job(client.sessions, "job.cancel", "U", job_id)
        client.close()
        out.print(f"job {job_id}: {state}, cancel asked for", highlight=False)
        return EXIT_OK

    run(action)


@app.command("retry")
def job_retry(
    job_id: Annotated[int, typer.Argument(help="The job's id.")],
    wait: Annotated[bool, typer.Option("--wait", help="Follow it to its end.")] = False,
) -> None:
    """Retry a partial or failed job; a partial retrieve asks only for what is missing."""

    def action(settings: Settings) -> int:
        client = Client.from_settings(settings)
        client.retry(job_id)
        note_job(client.sessions, "job.retry", "U", job_id)
        out.print(f"job {job_id} queued again", highlight=False)
        code = EXIT_OK
        if wait:
            state = follow(client, job_id)
            print_job(client.status(job_id))
            code = EXIT_FOR_STATE[state]
        client.close()
        return code

    run(action)


def queue_job(settings: Settings, request: JobRequest, wait: bool, as_json: bool = False) -> int:
    """Submit a job; with ``wait``, follow it to its end. Returns the exit status.

    With ``as_json`` stdout gets one document: the job as queued; with
    ``wait``, a find's answers (DICOM JSON, as a direct find prints them) or
    a retrieve's job as it ended.
    """
    client = Client.from_settings(settings)
    job_id = client.submit(request)
    note_job(client.sessions, "job.submit", "C", job_id)
    (err if as_json else out).print(f"job {job_id} queued", highlight=False)
    # Recorded but not yet sent (the broker down): said at once, on stderr.
    note = client.status(job_id)["note"]
    if note:
        err.print(f"[yellow]job {job_id}: {note}[/]", highlight=False)
    code = EXIT_OK
    if wait:
        state = follow(client, job_id)
        code = EXIT_FOR_STATE[state]
        if as_json and request.kind is JobKind.FIND:
            print_json(client.results(job_id))
        elif as_json:
            print_json(client.status(job_id, responses=True))
        else:
            print_job(client.status(job_id))
    elif as_json:
        print_json(client.status(job_id))
    client.close()
    return code


__all__ = ["EXIT_FOR_STATE", "follow", "print_job", "queue_job"]
