"""/nodes: the PACS the farm knows: list, add, change, remove, echo."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response, status
from sqlalchemy import select
from sqlalchemy.orm import object_session

from qrfarm.dicomweb import url_host
from qrfarm.errors import Conflict, NotFound
from qrfarm.jobs import profiles
from qrfarm.jobs.nodes import NodeSpec, check_secret_within, upsert_node
from qrfarm.jobs.nodes import remove_node as remove_registered_node
from qrfarm.models import NodeRecord
from qrfarm.nodes import echo as node_echo

from .deps import Context, Db
from .schemas import UNREADABLE_BODY, EchoOut, ErrorOut, NodeCreate, NodeIn, NodeOut
from .scopes import needs
from .tokens import Scope

router = APIRouter(prefix="/nodes", tags=["nodes"])
Name = Annotated[str, Path(min_length=1, max_length=64)]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut}}


def _out(row: NodeRecord) -> dict[str, Any]:
    session = object_session(row)
    assert session is not None
    return {
        "profile": profiles.profile(session, row.id),
        "name": row.name,
        "ae_title": row.ae_title,
        "host": row.host,
        "port": row.port,
        "max_associations": row.max_associations,
        "store_ae_titles": list(row.store_ae_titles or []),
        "store_hosts": list(row.store_hosts or []),
        "any_store_host": row.any_store_host,
        "tls": row.tls,
        "tls_ca_file": row.tls_ca_file,
        "tls_cert_file": row.tls_cert_file,
        "tls_key_file": row.tls_key_file,
        "role": row.role,
        "bulk_windows": list(row.bulk_windows or []),
        "timezone": row.timezone,
        "retrieves_per_minute": row.retrieves_per_minute,
        "dicomweb_url": row.dicomweb_url,
        "dicomweb_auth": row.dicomweb_auth,
        "dicomweb_username": row.dicomweb_username,
        "dicomweb_secret_file": row.dicomweb_secret_file,
        "retrieve_transport": row.retrieve_transport,
        "delivery_transport": row.delivery_transport,
    }


def _row(db: Db, name: str) -> NodeRecord:
    row = db.scalar(select(NodeRecord).where(NodeRecord.name == name))
    if row is None:
        raise NotFound(f"node {name!r} is not registered")
    return row


def _save(ctx: Context, db: Db, name: str, body: NodeIn) -> NodeRecord:
    ctx.settings.check_target(body.host)
    if body.dicomweb_url is not None:
        ctx.settings.check_target(url_host(body.dicomweb_url))
    secret_file = body.dicomweb_secret_file
    if secret_file is not None:
        settings = ctx.settings
        secrets = settings.dicomweb_secrets_dir or settings.data_dir / "secrets"
        secret_file = check_secret_within(secret_file, secrets)
    row = upsert_node(
        db,
        NodeSpec(
            name,
            body.ae_title,
            body.host,
            body.port,
            body.max_associations,
            list(body.store_ae_titles),
            store_hosts=list(body.store_hosts),
            any_store_host=body.any_store_host,
            tls=body.tls,
            tls_ca_file=body.tls_ca_file,
            tls_cert_file=body.tls_cert_file,
            tls_key_file=body.tls_key_file,
            role=body.role,
            patient_id_issuer=body.patient_id_issuer,
            issuer_matching=body.issuer_matching,
            dicomweb_url=body.dicomweb_url,
            dicomweb_auth=body.dicomweb_auth,
            dicomweb_username=body.dicomweb_username,
            dicomweb_secret_file=secret_file,
            retrieve_transport=body.retrieve_transport,
            delivery_transport=body.delivery_transport,
            bulk_windows=list(body.bulk_windows),
            timezone=body.timezone,
            retrieves_per_minute=body.retrieves_per_minute,
        ),
    )
    db.commit()
    return row


@router.get("", response_model=list[NodeOut], **needs(Scope.READ))
def list_nodes(db: Db) -> list[dict[str, Any]]:
    return [_out(r) for r in db.scalars(select(NodeRecord).order_by(NodeRecord.name))]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=NodeOut,
    responses={**UNREADABLE_BODY, 409: {"model": ErrorOut}},
    **needs(Scope.ADMIN, ("node.add", "C")),
)
def add_node(body: NodeCreate, ctx: Context, db: Db, response: Response) -> dict[str, Any]:
    """Register a node; a name already taken is a conflict (change it with PUT)."""
    if db.scalar(select(NodeRecord.id).where(NodeRecord.name == body.name)) is not None:
        raise Conflict(f"node {body.name!r} exists; PUT /nodes/{body.name} changes it")
    row = _save(ctx, db, body.name, body)
    response.headers["Location"] = f"/nodes/{row.name}"
    return _out(row)


@router.get("/{name}", response_model=NodeOut, responses=NOT_FOUND, **needs(Scope.READ))
def read_node(name: Name, db: Db) -> dict[str, Any]:
    return _out(_row(db, name))


@router.put(
    "/{name}",
    response_model=NodeOut,
    responses={**UNREADABLE_BODY, **NOT_FOUND},
    **needs(Scope.ADMIN, ("node.change", "U")),
)
def change_node(name: Name, body: NodeIn, ctx: Context, db: Db) -> dict[str, Any]:
    """Change a node's address, limits or store AE titles."""
    _row(db, name)
    return _out(_save(ctx, db, name, body))


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**NOT_FOUND, 409: {"model": ErrorOut}},
    **needs(Scope.ADMIN, ("node.remove", "D")),
)
def remove_node(name: Name, db: Db) -> Response:
    """Remove a node no job refers to (jobs keep their node: the record stays whole)."""
    _row(db, name)
    remove_registered_node(db, name)
    db.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{name}/echo",
    response_model=EchoOut,
    responses={
        **NOT_FOUND,
        502: {"model": EchoOut, "description": "No association could be made; why."},
    },
    **needs(Scope.READ),
)
def echo_node(name: Name, ctx: Context, db: Db, response: Response) -> dict[str, Any]:
    """C-ECHO the node; 502 when no association can be made, with the reason."""
    _row(db, name)
    answer = node_echo.echo(ctx.sessions, ctx.settings, name)
    if answer["category"] == node_echo.UNREACHABLE:
        response.status_code = status.HTTP_502_BAD_GATEWAY
    else:
        answer.pop("detail")  # the status says it
    return answer
