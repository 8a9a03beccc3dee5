"""Forwarding through the farm: POST /jobs/{id}/forward sends what a finished job
holds on to a registered node (a forward job of its own); a destination's
forwarding options; the pseudonyms of its deliveries (admin only)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from qrfarm.delivery import forward as forwarding
from qrfarm.delivery import pseudonymise
from qrfarm.jobs.queries import job_summary
from qrfarm.notify.targets import validate_callback_url

from .deps import Context
from .routes_jobs import JobId, reference_of
from .schemas import UNREADABLE_BODY, ErrorOut, JobOut
from .scopes import needs
from .tokens import Scope

jobs_router = APIRouter(prefix="/jobs", tags=["jobs"])
nodes_router = APIRouter(prefix="/nodes", tags=["nodes"])
Name = Annotated[str, Path(min_length=1, max_length=64)]
Value = Annotated[str | None, Query(min_length=1, max_length=64)]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut}}


class ForwardIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    destination: str = Field(min_length=1, max_length=64, description="A registered node's name.")
    transcode: bool | None = Field(
        None,
        description="Convert an instance the destination refuses in its held transfer "
        "syntax (null: the destination's own option).",
    )
    priority: int = Field(0, ge=-100, le=100)
    external_reference: str | None = Field(None, min_length=1, max_length=255)
    callback_url: str | None = Field(None, min_length=1, max_length=2048)


class ForwardingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    via_farm: bool | None = Field(
        None, description="Moves meant for it go to the farm, which forwards them on."
    )
    transcode: bool | None = None
    pseudonymise: bool | None = Field(
        None, description="De-identify what is forwarded to it (PS3.15 Basic Profile)."
    )


class ForwardingOut(BaseModel):
    via_farm: bool
    transcode: bool
    pseudonymise: bool


class PseudonymOut(BaseModel):
    kind: str
    original: str
    pseudonym: str


@jobs_router.post(
    "/{job_id}/forward",
    status_code=status.HTTP_201_CREATED,
    response_model=JobOut,
    responses={
        **UNREADABLE_BODY,
        **NOT_FOUND,
        200: {"model": JobOut, "description": "The same forward, sent before under this key."},
        409: {"model": ErrorOut, "description": "The key was used for another request."},
    },
    **needs(Scope.SUBMIT, ("job.forward", "C")),
)
def forward_job(job_id: JobId, body: ForwardIn, ctx: Context, response: Response) -> dict[str, Any]:
    """Forward what a completed or partial job holds to a registered node: a job of
    kind ``forward``, completed once the destination confirms every instance."""
    reference = reference_of(body.external_reference, None)
    if body.callback_url is not None:
        validate_callback_url(
            body.callback_url,
            allowed_hosts=tuple(ctx.settings.allowed_hosts),
            secret_configured=ctx.settings.webhook_secret is not None,
        )
    request = forwarding.ForwardRequest(
        source_job_id=job_id,
        destination=body.destination,
        transcode=body.transcode,
        priority=body.priority,
        external_reference=reference,
        callback_url=body.callback_url,
        max_attempts=ctx.settings.max_attempts,
    )
    with ctx.sessions() as db:
        earlier = forwarding.earlier_forward(db, request)  # Conflict: another job's
    if earlier is not None:
        response.status_code = status.HTTP_200_OK
        with ctx.sessions() as db:
            return job_summary(db, earlier, responses=False)
    forward_id = forwarding.submit_forward(
        ctx.sessions, request, ctx.dispatcher, ctx.settings.check_target
    )
    with ctx.sessions() as db:
        return job_summary(db, forward_id, responses=False)


@nodes_router.get(
    "/{name}/forwarding",
    response_model=ForwardingOut,
    responses=NOT_FOUND,
    **needs(Scope.READ),
)
def get_forwarding(name: Name, ctx: Context) -> dict[str, bool]:
    """A destination's forwarding options."""
    with ctx.sessions() as db:
        node = forwarding.destination_node(db, name)
        return forwarding.options_document(forwarding.options_of(db, node.id))


@nodes_router.put(
    "/{name}/forwarding",
    response_model=ForwardingOut,
    responses={**UNREADABLE_BODY, **NOT_FOUND},
    **needs(Scope.ADMIN, ("node.forwarding", "U")),
)
def put_forwarding(name: Name, body: ForwardingIn, ctx: Context) -> dict[str, bool]:
    """Change a destination's forwarding options (those given)."""
    with ctx.sessions() as db, db.begin():
        row = forwarding.set_options(
            db,
            name,
            via_farm=body.via_farm,
            transcode=body.transcode,
            pseudonymise=body.pseudonymise,
        )
        return forwarding.options_document(row)


@nodes_router.get(
    "/{name}/pseudonyms",
    response_model=list[PseudonymOut],
    responses=NOT_FOUND,
    **needs(Scope.ADMIN, ("node.pseudonyms", "R")),
)
def get_pseudonyms(
    name: Name, ctx: Context, original: Value = None, pseudonym: Value = None
) -> list[dict[str, str]]:
    """What was replaced by what in deliveries to this node, by an original value
    or a pseudonym (at most 1,000 rows)."""
    with ctx.sessions() as db:
        node = forwarding.destination_node(db, name)
        return pseudonymise.look_up(db, node.id, original=original, pseudonym=pseudonym)
