"""Signing in and out, the overview, nodes, prefetch and orphans pages."""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
import time
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from qrfarm.api.tokens import Scope
from qrfarm.errors import QrfarmError, SignInRefused
from qrfarm.health import echo_storage_scp
from qrfarm.jobs import profiles
from qrfarm.jobs.nodes import NodeSpec, upsert_node
from qrfarm.models import NodeRecord
from qrfarm.workflow import audit

from . import data
from .context import console_context
from .render import note, page
from .session import (
    CSRF_FIELD,
    LOGIN_COOKIE,
    ConsoleUser,
    SigningOut,
    User,
    end_session,
    flash,
    needs,
    set_cookie,
    sign,
    start_session,
    unsign,
)

router = APIRouter(prefix="/console", include_in_schema=False)
Admin = Annotated[ConsoleUser, needs(Scope.ADMIN)]
Reader = Annotated[ConsoleUser, needs(Scope.READ)]
SCP_PROBE_S = 2.0


def _safe_next(value: str | None) -> str:
    """Only a path inside the console: never a redirect elsewhere."""
    if value and value.startswith("/console") and "//" not in value and "\\" not in value:
        return value
    return "/console/"


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/console/") -> HTMLResponse:
    ctx = console_context(request)
    nonce = secrets.token_urlsafe(24)
    response = page(
        request, "login.html", None, title="Sign in", login_csrf=nonce, next=_safe_next(next)
    )
    set_cookie(
        response, request, LOGIN_COOKIE, sign(ctx.key, {"n": nonce, "exp": time.time() + 900}), 900
    )
    return response


@router.post("/login")
def login(
    request: Request,
    token: Annotated[str, Form(max_length=200)],
    csrf: Annotated[str, Form(alias=CSRF_FIELD, max_length=100)] = "",
    next: Annotated[str, Form(max_length=500)] = "/console/",
) -> Response:
    ctx = console_context(request)
    login_cookie = unsign(ctx.key, request.cookies.get(LOGIN_COOKIE))
    sent_nonce = str(login_cookie.get("n")) if login_cookie is not None else ""
    if login_cookie is None or not secrets.compare_digest(sent_nonce.encode(), csrf.encode()):
        return page(
            request,
            "login.html",
            None,
            title="Sign in",
            status_code=403,
            error="The sign-in form expired or did not come from this console: try again.",
            login_csrf="",
            next=_safe_next(next),
        )
    response = RedirectResponse(_safe_next(next), status_code=303)
    try:
        start_session(ctx, request, response, token.strip())
    except SignInRefused as refusal:
        nonce = secrets.token_urlsafe(24)
        refused = page(
            request,
            "login.html",
            None,
            title="Sign in",
            status_code=refusal.status_code,
            error=str(refusal),
            login_csrf=nonce,
            next=_safe_next(next),
        )
        set_cookie(
            refused,
            request,
            LOGIN_COOKIE,
            sign(ctx.key, {"n": nonce, "exp": time.time() + 900}),
            900,
        )
        return refused
    response.delete_cookie(LOGIN_COOKIE, path="/console")
    return response


@router.post("/logout")
def logout(request: Request, user: SigningOut) -> Response:
    response = RedirectResponse("/console/login", status_code=303)
    end_session(console_context(request), user, response)
    return response


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request, user: User) -> HTMLResponse:
    ctx = console_context(request)

    def gather() -> dict[str, Any]:
        with ctx.client.sessions() as db:
            return {
                "by_state": data.jobs_by_node_and_state(db),
                "hour": data.throughput(db, data.HOUR),
                "recent": data.throughput(db, dt.timedelta(minutes=5)),
                "bad": data.ended_badly(db),
                "use": data.node_use(db),
                "workers": data.workers_seen(db),
            }

    def scp() -> tuple[bool, str]:
        try:
            return True, echo_storage_scp(ctx.settings, SCP_PROBE_S)
        except (QrfarmError, RuntimeError) as exc:
            return False, str(exc)

    values = await run_in_threadpool(gather)
    values["broker"] = await run_in_threadpool(
        data.broker_depth, ctx.settings.broker_url, list(values["use"])
    )
    return page(
        request,
        "overview.html",
        user,
        title="Overview",
        section="Overview",
        states=["queued", "running", "reconciling", "completed", "partial", "failed", "cancelled"],
        scp=await run_in_threadpool(scp),
        **values,
    )


def _node_row(request: Request, name: str) -> NodeRecord:
    with console_context(request).client.sessions() as db:
        row = db.scalar(select(NodeRecord).where(NodeRecord.name == name))
        if row is None:
            raise QrfarmError(f"node {name!r} is not registered")
        db.expunge(row)
        return row


@router.get("/nodes", response_class=HTMLResponse)
def nodes_page(request: Request, user: User) -> HTMLResponse:
    with console_context(request).client.sessions() as db:
        rows = list(db.scalars(select(NodeRecord).order_by(NodeRecord.name)))
        use = data.node_use(db)
        db.expunge_all()
    return page(request, "nodes.html", user, title="Nodes", section="Nodes", nodes=rows, use=use)


@router.get("/nodes/{name}", response_class=HTMLResponse)
def node_page(request: Request, user: User, name: str) -> HTMLResponse:
    ctx = console_context(request)
    row = _node_row(request, name)
    with ctx.client.sessions() as db:
        profile = profiles.profile(db, row.id)
        use = data.node_use(db).get(name, {"in_use": 0, "queued": 0})
        errors = data.recent_errors(db, name)
    return page(
        request,
        "node.html",
        user,
        title=f"Node {name}",
        section="Nodes",
        n=row,
        profile=profile,
        traits=profiles.TRAITS,
        use=use,
        errors=errors,
    )


@router.post("/nodes/{name}/echo")
def echo(request: Request, user: Reader, name: str) -> Response:
    """C-ECHO, open to ``read`` as the API's echo is: it changes nothing."""
    ctx = console_context(request)
    response = RedirectResponse(f"/console/nodes/{name}", status_code=303)
    try:
        answer = ctx.client.echo(name)
    except QrfarmError as exc:
        flash(ctx, request, response, f"Echo {name}: {exc}")
        return response
    note(
        request,
        user,
        "node.echo",
        "E",
        node=name,
        outcome=audit.SUCCESS if answer["ok"] else audit.FAILED,
    )
    verdict = "success" if answer["ok"] else "failed"
    flash(
        ctx,
        request,
        response,
        f"Echo {name}: {verdict}, {answer['detail']} ({answer['elapsed_ms']} ms).",
    )
    return response


def _words(text: str) -> list[str]:
    return [w for w in text.replace(",", " ").split() if w][:32]


@router.post("/nodes")
def add_node(
    request: Request,
    user: Admin,
    name: Annotated[str, Form(max_length=64)],
    ae_title: Annotated[str, Form(max_length=16)],
    host: Annotated[str, Form(max_length=255)],
    port: Annotated[int, Form(ge=1, le=65535)],
    max_associations: Annotated[int, Form(ge=1, le=64)] = 4,
    store_ae_titles: Annotated[str, Form(max_length=1000)] = "",
    store_hosts: Annotated[str, Form(max_length=2000)] = "",
    any_store_host: Annotated[str, Form(max_length=4)] = "",
) -> Response:
    fields = NodeFields(
        ae_title, host, port, max_associations, store_ae_titles, store_hosts, any_store_host
    )
    return _save_node(request, user, name.strip(), fields, adding=True)


@router.post("/nodes/{name}")
def change_node(
    request: Request,
    user: Admin,
    name: str,
    ae_title: Annotated[str, Form(max_length=16)],
    host: Annotated[str, Form(max_length=255)],
    port: Annotated[int, Form(ge=1, le=65535)],
    max_associations: Annotated[int, Form(ge=1, le=64)] = 4,
    store_ae_titles: Annotated[str, Form(max_length=1000)] = "",
    store_hosts: Annotated[str, Form(max_length=2000)] = "",
    any_store_host: Annotated[str, Form(max_length=4)] = "",
) -> Response:
    fields = NodeFields(
        ae_title, host, port, max_associations, store_ae_titles, store_hosts, any_store_host
    )
    return _save_node(request, user, name, fields, adding=False)


@dataclasses.dataclass(frozen=True)
class NodeFields:
    ae_title: str
    host: str
    port: int
    max_associations: int
    store_ae_titles: str
    store_hosts: str
    any_store_host: str


def _save_node(
    request: Request, user: ConsoleUser, node_name: str, form: NodeFields, *, adding: bool
) -> Response:
    """Add a node (admin), or change one: fields the form does not show are kept."""
    ctx = console_context(request)
    back = RedirectResponse(
        "/console/nodes" if adding else f"/console/nodes/{node_name}", status_code=303
    )
    try:
        if not node_name:
            raise QrfarmError("a node needs a name")
        ctx.settings.check_target(form.host)
        with ctx.client.sessions() as db, db.begin():
            row = db.scalar(select(NodeRecord).where(NodeRecord.name == node_name))
            if adding and row is not None:
                raise QrfarmError(f"node {node_name!r} exists; change it on its own page")
            if not adding and row is None:
                raise QrfarmError(f"node {node_name!r} is not registered")
            kept = {
                f.name: getattr(row, f.name)
                for f in dataclasses.fields(NodeSpec)
                if row is not None and hasattr(row, f.name)
            }
            spec = NodeSpec(
                **{
                    **kept,
                    "name": node_name,
                    "ae_title": form.ae_title.strip(),
                    "host": form.host.strip(),
                    "port": form.port,
                    "max_associations": form.max_associations,
                    "store_ae_titles": _words(form.store_ae_titles),
                    "store_hosts": _words(form.store_hosts),
                    "any_store_host": bool(form.any_store_host),
                }
            )
            upsert_node(db, spec)
    except (QrfarmError, ValueError) as exc:
        flash(ctx, request, back, f"Not saved: {exc}")
        return back
    note(
        request,
        user,
        "node.add" if adding else "node.change",
        "C" if adding else "U",
        node=node_name,
    )
    back = RedirectResponse(f"/console/nodes/{node_name}", status_code=303)
    flash(ctx, request, back, f"Node {node_name} saved.")
    return back
