"""Batches: a list of retrieves submitted at once, one child per good row.

A row by study UID becomes a move job; a row by accession number or by
patient ID (with dates) a retrieval (qrfarm.workflow.retrieve: a find, then
a move per study found). The batch, its rows and its move jobs are written
in one transaction; the retrievals each start in their own, and a row whose
retrieval is refused then is recorded as refused too. Children are sent
after their commit; a bulk priority (the default) holds them outside their
node's bulk windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.dicom import Level
from qrfarm.errors import FieldError, PermanentError
from qrfarm.jobs.dispatch import Dispatcher, send_run_jobs
from qrfarm.jobs.priority import BULK, HIGHEST, LOWEST
from qrfarm.jobs.submit import JobRequest, SubmitRules, new_job
from qrfarm.jobs.submit_many import ready_to_send
from qrfarm.models import Batch, BatchRow, Job, JobKind, NodeRecord, table
from qrfarm.nodes.roles import resolve_destination

from . import retrieve
from .batch_input import BatchInput, Row, parse
from .retrieve_criteria import RetrieveRequest

CHUNK = 500


@dataclass(frozen=True)
class BatchRequest:
    data: bytes
    source_format: str  # csv or json
    priority: int | None = None
    submitted_by: str | None = None


def _check_places(session: Session, rows: Sequence[Row], farm_scp: str) -> None:
    """Sources are registered nodes, destinations the farm or registered destinations."""
    nodes = set(session.scalars(select(NodeRecord.name)))
    destinations: dict[str, str | None] = {}
    for row in rows:
        source = row.values["source"]
        if source is not None and source not in nodes:
            row.refuse("source", f"node {source!r} is not registered (qrfarm node add)")
        destination = row.values["destination"]
        if destination is None or row.error is not None:
            continue
        if destination not in destinations:
            try:
                resolve_destination(session, destination, farm_scp)
                destinations[destination] = None
            except FieldError as exc:
                destinations[destination] = exc.rule
        refused = destinations[destination]
        if refused is not None:
            row.refuse("destination", refused)


def _move_request(row: Row, priority: int, batch_id: int) -> JobRequest:
    return JobRequest(
        JobKind.MOVE,
        str(row.values["source"]),
        Level.STUDY,
        keys={"StudyInstanceUID": str(row.values["study_uid"])},
        destination=row.values["destination"],
        priority=priority,
        batch_id=batch_id,
    )


def _row_values(batch_id: int, row: Row, job_id: int | None) -> dict[str, object]:
    return {
        "batch_id": batch_id,
        "row_number": row.number,
        **row.values,
        "job_id": job_id,
        "error_column": row.error_column,
        "error": row.error,
    }


def submit(
    sessions: sessionmaker[Session],
    request: BatchRequest,
    dispatcher: Dispatcher,
    rules: SubmitRules,
) -> int:
    """Record the batch and its children, then send them; the batch's id."""
    parsed, document_priority = parse(request.data, request.source_format)
    priority = request.priority if request.priority is not None else document_priority
    priority = BULK if priority is None else priority
    if not LOWEST <= priority <= HIGHEST:
        raise FieldError(["body", "priority"], f"a priority is from {LOWEST} to {HIGHEST}")
    with sessions() as session, session.begin():
        _check_places(session, parsed.good, rules.default_destination)
        batch = Batch(
            submitted_by=request.submitted_by,
            source_format=parsed.source_format,
            priority=priority,
            row_count=len(parsed.rows),
            error_count=0,
        )
        session.add(batch)
        session.flush()
        batch_id = batch.id
        moves = _add_moves(session, parsed, priority, batch_id, rules)
        session.execute(
            insert(table(BatchRow)),
            [_row_values(batch_id, row, moves.get(row.number)) for row in parsed.rows],
        )
        sends = ready_to_send(session, list(moves.values()))
    send_run_jobs(sessions, dispatcher, sends)
    _start_retrievals(sessions, parsed, priority, batch_id, dispatcher, rules)
    with sessions() as session, session.begin():
        errors = sum(1 for row in parsed.rows if row.error is not None)
        session.execute(update(Batch).where(Batch.id == batch_id).values(error_count=errors))
    return batch_id


def _add_moves(
    session: Session, parsed: BatchInput, priority: int, batch_id: int, rules: SubmitRules
) -> dict[int, int]:
    """The rows by study UID as move jobs (one INSERT); row number -> job id."""
    rows = [row for row in parsed.good if row.kind == "study_uid"]
    jobs: dict[int, Job] = {}
    with session.no_autoflush:
        for row in rows:
            try:
                jobs[row.number] = new_job(
                    session, _move_request(row, priority, batch_id), rules, flush=False
                )
            except PermanentError as exc:
                row.refuse("study_uid", str(exc))
    session.flush()
    return {number: job.id for number, job in jobs.items()}


def _start_retrievals(
    sessions: sessionmaker[Session],
    parsed: BatchInput,
    priority: int,
    batch_id: int,
    dispatcher: Dispatcher,
    rules: SubmitRules,
) -> None:
    """Rows by accession or patient: a retrieval each (a find, then moves)."""
    started: dict[int, int] = {}
    tried = [row for row in parsed.good if row.kind != "study_uid"]
    for row in tried:
        values = row.values
        try:
            started[row.number] = retrieve.start(
                sessions,
                RetrieveRequest(
                    node=str(values["source"]),
                    accession_number=values["accession"],
                    patient_id=values["patient_id"],
                    date_from=values["date_from"],
                    date_to=values["date_to"],
                    destination=values["destination"],
                    priority=priority,
                ),
                dispatcher,
                rules,
            )
        except PermanentError as exc:
            row.refuse(row.kind, str(exc))
    with sessions() as session, session.begin():
        for row in tried:
            session.execute(
                update(BatchRow)
                .where(BatchRow.batch_id == batch_id, BatchRow.row_number == row.number)
                .values(
                    retrieval_id=started.get(row.number),
                    error_column=row.error_column,
                    error=row.error,
                )
            )
        if started:
            # The retrievals' find jobs belong to the batch too (bulk actions by batch).
            session.execute(
                update(Job)
                .where(Job.retrieval_id.in_(list(started.values())))
                .values(batch_id=batch_id)
            )
