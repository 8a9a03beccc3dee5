"""/batches: submit a list of retrieves (CSV or JSON), follow it, download its results."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from qrfarm.errors import FieldError
from qrfarm.jobs.priority import HIGHEST, LOWEST
from qrfarm.workflow import batch_report, batches

from .deps import Context, Db
from .schemas import ErrorOut
from .scopes import needs
from .tokens import Scope

router = APIRouter(prefix="/batches", tags=["batches"])
BatchId = Annotated[int, Path(ge=1, le=2**31 - 1)]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut}}
FORMATS = {"text/csv": "csv", "application/csv": "csv", "application/json": "json"}
ROW_SCHEMA = {
    "type": "object",
    "properties": {
        name: {"type": "string"}
        for name in ("patient_id", "accession", "study_uid", "source", "destination")
    }
    | {"date_from": {"type": "string"}, "date_to": {"type": "string"}},
}
BODY = {
    "requestBody": {
        "required": True,
        "description": "Rows by CSV (a header row naming the columns) or JSON (a list of "
        "rows, or {rows, priority}); columns: patient_id, accession or study_uid (one), "
        "source (a node), destination, date_from and date_to (with patient_id).",
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"type": "array", "items": ROW_SCHEMA},
                        {
                            "type": "object",
                            "properties": {
                                "rows": {"type": "array", "items": ROW_SCHEMA},
                                "priority": {"type": "integer"},
                            },
                        },
                    ]
                }
            },
        },
    }
}


class RowError(BaseModel):
    row: int = Field(description="1 for the first row of data.")
    column: str | None
    message: str | None


class Progress(BaseModel):
    ended: int
    of: int
    by_state: dict[str, int]


class BatchOut(BaseModel):
    id: int
    submitted_by: str | None
    source_format: str
    priority: int
    created_at: str
    rows: int
    children: int = Field(description="Rows that became a job or a retrieval.")
    row_errors: int
    progress: Progress
    done: bool
    errors: list[RowError] | None = None


def _submit_spec() -> dict[str, Any]:
    spec = needs(Scope.SUBMIT, ("batch.submit", "C"))
    spec["openapi_extra"] = {**spec["openapi_extra"], **BODY}
    return spec


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=BatchOut,
    responses={422: {"description": "The document cannot be read as a batch."}},
    **_submit_spec(),
)
async def create_batch(
    request: Request,
    ctx: Context,
    response: Response,
    priority: Annotated[int | None, Query(ge=LOWEST, le=HIGHEST)] = None,
) -> dict[str, Any]:
    """A batch: one child per good row (a move by study UID, a retrieval by accession
    or patient), bulk priority unless said; bad rows reported by row and column."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in FORMATS:
        raise FieldError(["header", "Content-Type"], "a batch is text/csv or application/json")
    data = await request.body()  # bounded by the API's body limit (qrfarm.api.limits)
    batch_id = await run_in_threadpool(
        batches.submit,
        ctx.sessions,
        batches.BatchRequest(
            data, FORMATS[kind], priority, getattr(request.state, "token_name", None)
        ),
        ctx.dispatcher,
        ctx.rules,
    )
    response.headers["Location"] = f"/batches/{batch_id}"
    return await run_in_threadpool(_summary, ctx, batch_id)


def _summary(ctx: Context, batch_id: int) -> dict[str, Any]:
    with ctx.sessions() as session:
        return batch_report.summary(session, batch_id)


@router.get(
    "/{batch_id}",
    response_model=BatchOut,
    responses=NOT_FOUND,
    **needs(Scope.READ, ("batch.read", "R")),
)
def read_batch(batch_id: BatchId, db: Db) -> dict[str, Any]:
    """Progress (children by state, how many ended) and the rows refused."""
    return batch_report.summary(db, batch_id)


@router.get(
    "/{batch_id}/results.csv",
    responses={**NOT_FOUND, 200: {"content": {"text/csv": {}}}},
    response_class=StreamingResponse,
    **needs(Scope.READ, ("batch.results.read", "R")),
)
def batch_results(batch_id: BatchId, ctx: Context) -> StreamingResponse:
    """Every row as given, with its outcome (the child's state, or refused and why)."""
    with ctx.sessions() as session:
        batch_report.summary(session, batch_id, errors=False)  # 404 before the stream starts

    def lines() -> Iterator[str]:
        with ctx.sessions() as session:
            yield from batch_report.results_csv(session, batch_id)

    return StreamingResponse(
        lines(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="batch-{batch_id}.csv"'},
    )
