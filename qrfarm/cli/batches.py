"""``qrfarm batch``: submit a list of retrieves, follow it, download its results
(through qrfarm.client.Client, as the API does)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..client import Client
from ..config import Settings
from ..errors import FieldError
from ..workflow import audit
from .common import EXIT_OK, app, out, print_json, run

batch_app = typer.Typer(help="Batches: many retrieves submitted at once.", no_args_is_help=True)
app.add_typer(batch_app, name="batch")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document, nothing else.")]


def _read(path: Path, limit: int) -> tuple[bytes, str]:
    """The file's bytes, at most the API's body limit, and its format by its name."""
    source_format = "json" if path.suffix.lower() == ".json" else "csv"
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise FieldError(
            [str(path)], f"larger than {limit} bytes (QRFARM_API_MAX_BODY_BYTES): split it"
        )
    return data, source_format


def _print_summary(summary: dict[str, object]) -> None:
    progress = summary["progress"]
    assert isinstance(progress, dict)
    out.print(
        f"batch {summary['id']}: {summary['rows']} row(s), {summary['children']} child(ren), "
        f"{summary['row_errors']} refused; {progress['ended']} of {progress['of']} ended "
        f"({', '.join(f'{k} {v}' for k, v in progress['by_state'].items()) or 'none'})",
        highlight=False,
    )
    errors = summary.get("errors") or []
    assert isinstance(errors, list)
    if errors:
        table = Table("row", "column", "why")
        for error in errors:
            table.add_row(str(error["row"]), str(error["column"]), str(error["message"]))
        out.print(table)


@batch_app.command("submit")
def batch_submit(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="Rows as CSV (or .json).")
    ],
    priority: Annotated[
        int | None,
        typer.Option(min=-100, max=100, help="Its children's priority (default: bulk, -10)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit a batch: one child per good row; bad rows reported by row and column."""

    def action(settings: Settings) -> int:
        data, source_format = _read(file, settings.api_max_body_bytes)
        client = Client.from_settings(settings)
        try:
            actor = audit.os_user()
            batch_id = client.submit_batch(
                data, source_format, priority=priority, submitted_by=actor.name
            )
            audit.write(
                client.sessions, actor, audit.Event("batch.submit", "C", detail=f"batch {batch_id}")
            )
            summary = client.batch(batch_id)
        finally:
            client.close()
        if as_json:
            print_json(summary)
        else:
            _print_summary(summary)
        return EXIT_OK

    run(action)


@batch_app.command("status")
def batch_status(
    batch_id: Annotated[int, typer.Argument(help="The batch's id.")], as_json: JsonOpt = False
) -> None:
    """A batch's progress and the rows refused."""

    def action(settings: Settings) -> int:
        client = Client.from_settings(settings)
        try:
            summary = client.batch(batch_id)
        finally:
            client.close()
        if as_json:
            print_json(summary)
        else:
            _print_summary(summary)
        return EXIT_OK

    run(action)


@batch_app.command("results")
def batch_results(
    batch_id: Annotated[int, typer.Argument(help="The batch's id.")],
    output: Annotated[
        Path | None, typer.Option("--out", help="Write the CSV here (default: standard output).")
    ] = None,
) -> None:
    """Every row as given with its outcome, as CSV."""

    def action(settings: Settings) -> int:
        client = Client.from_settings(settings)
        try:
            client.batch(batch_id)  # refused by name before anything is written
            audit.write(
                client.sessions,
                audit.os_user(),
                audit.Event("batch.results.read", "R", detail=f"batch {batch_id}"),
            )
            if output is None:
                for piece in client.batch_results(batch_id):
                    sys.stdout.write(piece)
            else:
                with output.open("w", encoding="utf-8", newline="") as handle:
                    for piece in client.batch_results(batch_id):
                        handle.write(piece)
        finally:
            client.close()
        return EXIT_OK

    run(action)
