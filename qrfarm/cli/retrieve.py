"""``qrfarm move NODE --accession A`` (or ``--patient-id P --date-from D``, or
``--study-uid U``): a retrieval through the Client, followed with ``--wait``;
``qrfarm retrieval ID`` shows (``--wait`` follows, ``--cancel`` cancels) one."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..client import Client
from ..config import Settings
from .common import EXIT_OK, app, err, out, print_json, run
from .jobs import EXIT_FOR_STATE


def print_retrieval(summary: dict[str, Any]) -> None:
    """What the caller needs: its state, the studies and their jobs, and why it failed
    (an ambiguous match names the patients by ID: this is the caller's own terminal)."""
    out.print(
        f"retrieval {summary['id']} on {summary['node']}: {summary['state']},"
        f" {summary['recorded']} instance(s) recorded",
        highlight=False,
        soft_wrap=True,
    )
    for study in summary["studies"]:
        job = f"move job {study['job_id']}" if "job_id" in study else "not moved"
        out.print(
            f"  {study['study_instance_uid']} {study.get('study_date') or ''}: {job}",
            highlight=False,
            soft_wrap=True,
        )
    if summary["error"]:
        out.print(f"  {summary['error']}", highlight=False, soft_wrap=True)


def queue_retrieval(
    settings: Settings,
    node: str,
    criteria: dict[str, str | None],
    destination: str | None,
    wait: bool,
    as_json: bool,
) -> int:
    """Start a retrieval; with ``wait`` follow it to its end. Returns the exit status."""
    client = Client.from_settings(settings)
    try:
        retrieval_id = client.retrieve(
            node,
            accession_number=criteria.get("accession_number"),
            patient_id=criteria.get("patient_id"),
            issuer=criteria.get("issuer"),
            date_from=criteria.get("date_from"),
            date_to=criteria.get("date_to"),
            study_instance_uid=criteria.get("study_instance_uid"),
            destination=destination,
        )
        (err if as_json else out).print(f"retrieval {retrieval_id} started", highlight=False)
        if not wait:
            if as_json:
                print_json(client.retrieval(retrieval_id))
            return EXIT_OK
        summary = client.wait_retrieval(retrieval_id)
        if as_json:
            print_json(summary)
        else:
            print_retrieval(summary)
        return EXIT_FOR_STATE.get(summary["state"], EXIT_OK)
    finally:
        client.close()


@app.command("retrieval")
def retrieval_show(
    retrieval_id: Annotated[int, typer.Argument(help="The retrieval's id.")],
    wait: Annotated[bool, typer.Option("--wait", help="Follow it to its end.")] = False,
    cancel: Annotated[
        bool, typer.Option("--cancel", help="Cancel it and its jobs (C-CANCEL to a running move).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Everything, as JSON.")] = False,
) -> None:
    """A retrieve by accession, patient or study: its studies, jobs and outcome."""

    def action(settings: Settings) -> int:
        client = Client.from_settings(settings)
        try:
            if cancel:
                client.cancel_retrieval(retrieval_id)
            summary = (
                client.wait_retrieval(retrieval_id) if wait else client.retrieval(retrieval_id)
            )
        finally:
            client.close()
        if as_json:
            print_json(summary)
        else:
            print_retrieval(summary)
        return EXIT_FOR_STATE.get(summary["state"], EXIT_OK) if summary["ended"] else EXIT_OK

    run(action)
