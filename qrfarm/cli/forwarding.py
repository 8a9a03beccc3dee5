"""Forwarding through the farm from the command line: ``qrfarm forward JOB --dest
NODE``, a destination's options (``qrfarm node forwarding``) and the pseudonyms
of its deliveries (``qrfarm pseudonyms``), all through qrfarm.client.Client."""

from __future__ import annotations

from typing import Annotated

import typer

from ..client import Client
from ..config import Settings
from ..workflow import audit
from .audit import note, note_job
from .common import EXIT_OK, app, err, out, print_json, run
from .farm import JsonOpt
from .jobs import EXIT_FOR_STATE, follow, print_job
from .nodes import node_app


@node_app.command("forwarding")
def node_forwarding(
    name: Annotated[str, typer.Argument(help="The destination node's name.")],
    via_farm: Annotated[
        bool | None,
        typer.Option(
            "--via-farm/--direct",
            help="Moves meant for it go to the farm, which forwards them on "
            "(the source PACS cannot reach it).",
        ),
    ] = None,
    transcode: Annotated[
        bool | None,
        typer.Option(
            "--transcode/--no-transcode",
            help="Convert an instance it refuses in the held transfer syntax.",
        ),
    ] = None,
    pseudonymise: Annotated[
        bool | None,
        typer.Option(
            "--pseudonymise/--no-pseudonymise",
            help="De-identify what is forwarded to it (PS3.15 Basic Profile).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a destination's forwarding options, changing those given."""

    def action(settings: Settings) -> int:
        client = Client.from_settings(settings)
        options = client.forwarding_options(
            name, via_farm=via_farm, transcode=transcode, pseudonymise=pseudonymise
        )
        if any(v is not None for v in (via_farm, transcode, pseudonymise)):
            note(
                client.sessions,
                audit.Event("node.forwarding", audit.UPDATE, node=name, detail=str(options)),
            )
        client.close()
        if as_json:
            print_json(options)
        else:
            out.print(
                f"{name}: " + ", ".join(f"{k} {'on' if v else 'off'}" for k, v in options.items()),
                highlight=False,
            )
        return EXIT_OK

    run(action)


@node_app.command("pseudonyms")
def node_pseudonyms(
    name: Annotated[str, typer.Argument(help="The destination node's name.")],
    original: Annotated[
        str | None, typer.Option("--original", help="An original patient ID or UID.")
    ] = None,
    pseudonym: Annotated[str | None, typer.Option("--pseudonym", help="A pseudonym.")] = None,
) -> None:
    """Look up what was replaced by what in deliveries to a node (JSON on stdout)."""

    def action(settings: Settings) -> int:
        client = Client.from_settings(settings)
        rows = client.pseudonyms(name, original=original, pseudonym=pseudonym)
        note(client.sessions, audit.Event("node.pseudonyms", audit.READ, node=name))
        client.close()
        print_json(rows)
        return EXIT_OK

    run(action)


@app.command("forward")
def forward_command(
    job_id: Annotated[int, typer.Argument(help="The job whose instances to send on.")],
    dest: Annotated[str, typer.Option("--dest", help="The destination node's name.")],
    transcode: Annotated[
        bool | None,
        typer.Option(
            "--transcode/--no-transcode",
            help="Allow conversion where the destination refuses the held syntax "
            "(default: the destination's option).",
        ),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow it to its end.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Forward what a finished job holds to a registered node, then verify it there."""

    def action(settings: Settings) -> int:
        client = Client.from_settings(settings)
        forward_id = client.forward(job_id, dest, transcode=transcode)
        note_job(client.sessions, "job.forward", audit.CREATE, forward_id)
        (err if as_json else out).print(
            f"job {forward_id} queued: forward of job {job_id} to {dest}", highlight=False
        )
        code = EXIT_OK
        if wait:
            code = EXIT_FOR_STATE[follow(client, forward_id)]
        summary = client.status(forward_id)
        client.close()
        if as_json:
            print_json(summary)
        elif wait:
            print_job(summary)
        return code

    run(action)
