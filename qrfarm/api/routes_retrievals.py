"""/retrievals: retrieve by an accession number, a patient ID and dates, or a study UID."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from qrfarm.errors import Conflict, FieldError, UnknownNode
from qrfarm.models import NodeRecord, Retrieval
from qrfarm.workflow import retrieve

from .deps import Context, Db
from .routes_jobs import IdempotencyKey, reference_of
from .schemas import UNREADABLE_BODY, ErrorOut
from .scopes import needs
from .tokens import Scope

router = APIRouter(tags=["retrievals"])
RetrievalId = Annotated[int, Path(ge=1, le=2**31 - 1)]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut}}


class RetrievalIn(BaseModel):
    """What to retrieve: one of accession_number, patient_id (with issuer and
    dates) or study_instance_uid; the farm finds the studies, then moves them."""

    model_config = ConfigDict(extra="forbid")

    node: str = Field(min_length=1, max_length=64)
    accession_number: str | None = Field(default=None, min_length=1, max_length=16)
    patient_id: str | None = Field(default=None, min_length=1, max_length=64)
    issuer: str | None = Field(
        default=None, min_length=1, max_length=64, description="Of patient_id; default: the node's."
    )
    date_from: str | None = Field(default=None, max_length=10, description="YYYY-MM-DD.")
    date_to: str | None = Field(default=None, max_length=10, description="YYYY-MM-DD.")
    study_instance_uid: str | None = Field(default=None, min_length=1, max_length=64)
    destination: str | None = Field(
        default=None, min_length=1, max_length=16, description="AE title; default: qrfarm's SCP."
    )
    priority: int = Field(default=0, ge=-100, le=100)
    external_reference: str | None = Field(default=None, min_length=1, max_length=255)


class RetrievalJobOut(BaseModel):
    id: int
    kind: str
    state: str
    recorded: int


class RetrievalOut(BaseModel):
    id: int
    node: str | None
    destination: str | None
    criteria: dict[str, str]
    state: str
    ended: bool
    studies: list[dict[str, Any]] = Field(
        description="The studies found: UID, patient ID, issuer, accession, date, move job."
    )
    recorded: int
    jobs: list[RetrievalJobOut]
    error: str | None = Field(
        description="Why it failed: no match, or an ambiguous one naming the patients by ID."
    )
    created_at: str
    ended_at: str | None


def _request(body: RetrievalIn, reference: str | None) -> retrieve.RetrieveRequest:
    return retrieve.RetrieveRequest(
        node=body.node,
        accession_number=body.accession_number,
        patient_id=body.patient_id,
        issuer=body.issuer,
        date_from=body.date_from,
        date_to=body.date_to,
        study_instance_uid=body.study_instance_uid,
        destination=body.destination,
        priority=body.priority,
        external_reference=reference,
    )


@router.post(
    "/retrievals",
    status_code=status.HTTP_201_CREATED,
    response_model=RetrievalOut,
    responses={
        **UNREADABLE_BODY,
        200: {"model": RetrievalOut, "description": "The retrieval made before."},
        409: {"model": ErrorOut, "description": "The key was used for another request."},
    },
    **needs(Scope.SUBMIT, ("retrieval.start", "C")),
)
def start_retrieval(
    body: RetrievalIn, ctx: Context, response: Response, idempotency_key: IdempotencyKey = None
) -> dict[str, Any]:
    """Find the studies of an accession number, a patient (and dates) or a study UID
    on the node, then move each as a child job. No match, or an ambiguous one, ends
    it failed with the reason (GET it until ``ended``)."""
    reference = reference_of(body.external_reference, idempotency_key)
    request = _request(body, reference)
    if reference:
        with ctx.sessions() as db:
            earlier = db.scalar(select(Retrieval).where(Retrieval.external_reference == reference))
            if earlier is not None:
                node = db.get(NodeRecord, earlier.node_id)
                same = node is not None and node.name == body.node
                if not same or earlier.criteria != retrieve.criteria_of(request):
                    raise Conflict(f"reference {reference!r} was used for another request")
                response.status_code = status.HTTP_200_OK
                return retrieve.summary(db, earlier.id)
    try:
        retrieval_id = retrieve.start(ctx.sessions, request, ctx.dispatcher, ctx.rules)
    except UnknownNode as exc:
        raise FieldError(["body", "node"], str(exc)) from exc
    response.headers["Location"] = f"/retrievals/{retrieval_id}"
    with ctx.sessions() as db:
        return retrieve.summary(db, retrieval_id)


@router.get(
    "/retrievals/{retrieval_id}",
    response_model=RetrievalOut,
    responses=NOT_FOUND,
    **needs(Scope.READ, ("retrieval.read", "R")),
)
def read_retrieval(retrieval_id: RetrievalId, db: Db) -> dict[str, Any]:
    """The retrieval: what was asked, the studies found, its jobs, and why it failed."""
    return retrieve.summary(db, retrieval_id)


@router.post(
    "/retrievals/{retrieval_id}/cancel",
    response_model=RetrievalOut,
    responses=NOT_FOUND,
    **needs(Scope.SUBMIT, ("retrieval.cancel", "U")),
)
def cancel_retrieval(retrieval_id: RetrievalId, ctx: Context) -> dict[str, Any]:
    """Cancel it and its jobs: queued ones end at once, a running move gets C-CANCEL."""
    retrieve.cancel(ctx.sessions, retrieval_id)
    with ctx.sessions() as db:
        return retrieve.summary(db, retrieval_id)
