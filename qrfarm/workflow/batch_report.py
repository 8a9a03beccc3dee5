"""How a batch is doing: progress over its children, each row's outcome, and
the results as CSV (the rows as given, with what became of each)."""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from qrfarm.errors import NotFound
from qrfarm.models import (
    ENDED_STATES,
    RETRIEVAL_ENDED,
    Batch,
    BatchRow,
    Job,
    Retrieval,
)

from .batch_input import COLUMNS

RESULT_COLUMNS = (
    "row",
    *COLUMNS,
    "outcome",
    "job_id",
    "retrieval_id",
    "recorded",
    "missing",
    "error_column",
    "error",
)
CHUNK = 1000


def _batch(session: Session, batch_id: int) -> Batch:
    batch = session.get(Batch, batch_id)
    if batch is None:
        raise NotFound(f"batch {batch_id} does not exist")
    return batch


def outcomes(session: Session, batch_id: int) -> Iterator[dict[str, Any]]:
    """Each row as given and what became of it, in row order (read a chunk at a time)."""
    after = 0
    while True:
        rows = session.execute(
            select(BatchRow, Job, Retrieval)
            .outerjoin(Job, Job.id == BatchRow.job_id)
            .outerjoin(Retrieval, Retrieval.id == BatchRow.retrieval_id)
            .where(BatchRow.batch_id == batch_id, BatchRow.row_number > after)
            .order_by(BatchRow.row_number)
            .limit(CHUNK)
        ).all()
        if not rows:
            return
        for row, job, retrieval in rows:
            if job is not None:
                outcome, recorded, missing = (
                    job.state.value,
                    job.recorded_count,
                    len(job.missing_uids or []),
                )
            elif retrieval is not None:
                outcome, recorded, missing = retrieval.state.value, None, None
            else:
                outcome, recorded, missing = "refused" if row.error else "none", None, None
            yield {
                "row": row.row_number,
                **{name: getattr(row, name) for name in COLUMNS},
                "outcome": outcome,
                "job_id": row.job_id,
                "retrieval_id": row.retrieval_id,
                "recorded": recorded,
                "missing": missing,
                "error_column": row.error_column,
                "error": row.error,
            }
        after = rows[-1][0].row_number


def summary(session: Session, batch_id: int, *, errors: bool = True) -> dict[str, Any]:
    """The batch, its progress (children by state; how many ended) and its row errors."""
    batch = _batch(session, batch_id)
    states: Counter[str] = Counter()
    ended = 0
    job_states = session.execute(
        select(Job.state)
        .join(BatchRow, BatchRow.job_id == Job.id)
        .where(BatchRow.batch_id == batch_id)
    ).scalars()
    for state in job_states:
        states[state.value] += 1
        ended += state in ENDED_STATES
    retrieval_states = session.execute(
        select(Retrieval.state)
        .join(BatchRow, BatchRow.retrieval_id == Retrieval.id)
        .where(BatchRow.batch_id == batch_id)
    ).scalars()
    for rstate in retrieval_states:
        states[rstate.value] += 1
        ended += rstate in RETRIEVAL_ENDED
    children = sum(states.values())
    document: dict[str, Any] = {
        "id": batch.id,
        "submitted_by": batch.submitted_by,
        "source_format": batch.source_format,
        "priority": batch.priority,
        "created_at": batch.created_at.isoformat(),
        "rows": batch.row_count,
        "children": children,
        "row_errors": batch.error_count,
        "progress": {"ended": ended, "of": children, "by_state": dict(sorted(states.items()))},
        "done": ended == children,
    }
    if errors:
        document["errors"] = [
            {"row": number, "column": column, "message": message}
            for number, column, message in session.execute(
                select(BatchRow.row_number, BatchRow.error_column, BatchRow.error)
                .where(BatchRow.batch_id == batch_id, BatchRow.error.is_not(None))
                .order_by(BatchRow.row_number)
            )
        ]
    return document


def results_csv(session: Session, batch_id: int) -> Iterator[str]:
    """The results as CSV text, a piece at a time (a header, then a line per row)."""
    _batch(session, batch_id)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    for count, outcome in enumerate(outcomes(session, batch_id), start=1):
        writer.writerow({k: ("" if v is None else _safe(v)) for k, v in outcome.items()})
        if count % 200 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _safe(value: object) -> object:
    """A cell a spreadsheet would take for a formula is written as text."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
