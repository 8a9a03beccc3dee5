"""``qrfarm audit``: the audit trail, newest first, filtered; and how the command
line writes to it (the person at the terminal: their login name and host)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ..config import Settings
from ..workflow import audit
from .common import EXIT_OK, app, out, print_json, run
from .farm import JsonOpt, database

log = logging.getLogger(__name__)


def note(sessions: sessionmaker[Session], event: audit.Event) -> None:
    """Record what this command did; a failure to record is logged, not raised
    (what was done is done)."""
    try:
        audit.write(sessions, audit.os_user(), event)
    except SQLAlchemyError as exc:
        log.error("audit row for %s not written: %s", event.action, type(exc).__name__)


def note_job(
    sessions: sessionmaker[Session],
    action: str,
    code: str,
    job_id: int,
    outcome: str = audit.SUCCESS,
    detail: str | None = None,
) -> None:
    """Record an action on a job, naming its node, patient and study."""
    with sessions() as session:
        objects = audit.job_objects(session, job_id)
    note(sessions, audit.Event(action, code, outcome, detail=detail, **objects))


@app.command("audit")
def audit_list(
    since: Annotated[
        dt.datetime | None, typer.Option(help="From this time (UTC), e.g. 2026-01-31T08:00.")
    ] = None,
    until: Annotated[dt.datetime | None, typer.Option(help="Before this time (UTC).")] = None,
    actor: Annotated[str | None, typer.Option(help="A token name, login or sender.")] = None,
    actor_kind: Annotated[
        str | None, typer.Option(help="token, os_user, hl7 or scheduler.")
    ] = None,
    action: Annotated[
        str | None, typer.Option(help='An action (job.submit), or a prefix ending in "." (job.).')
    ] = None,
    outcome: Annotated[str | None, typer.Option(help="success, refused or failed.")] = None,
    job: Annotated[int | None, typer.Option("--job", help="A job's id.")] = None,
    node: Annotated[str | None, typer.Option(help="A node's name.")] = None,
    patient: Annotated[str | None, typer.Option("--patient", help="A patient key.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """The audit trail: who read patient data or changed something, when, from where,
    with what outcome (newest first)."""

    def action_(settings: Settings) -> int:
        engine, sessions = database(settings)
        filters = audit.Filters(
            since=since,
            until=until,
            actor=actor,
            actor_kind=actor_kind,
            action=action,
            outcome=outcome,
            job_id=job,
            node=node,
            patient_key=patient,
        )
        with sessions() as session:
            rows, _ = audit.search(session, filters, limit=limit)
            documents = [audit.document(r) for r in rows]
            # Reading the trail is itself recorded (it holds patient keys).
            audit.record(session, audit.os_user(), audit.Event("audit.read", audit.READ))
            session.commit()
        engine.dispose()
        if as_json:
            print_json(documents)
            return EXIT_OK
        table = Table("at", "who", "from", "action", "outcome", "job", "node", "patient", "detail")
        for d in documents:
            table.add_row(
                d["at"][:19],
                f"{d['actor_kind']}:{d['actor']}",
                d["source"] or "",
                d["action"],
                d["outcome"],
                str(d["job_id"] or ""),
                d["node"] or "",
                d["patient_key"] or "",
                (d["detail"] or "")[:60],
            )
        out.print(table)
        return EXIT_OK

    run(action_)
