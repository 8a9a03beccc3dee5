"""The audit trail of the API: one row for each call of a route that declares an
audit action (``x-audit``, see scopes.needs), written after the route has
answered, with the token, the client's address, the job, node or patient the
call named, and its outcome (success, refused for a missing scope, failed).

A call without a valid token (401) names nobody and is not recorded here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from qrfarm.workflow import audit

from .deps import ApiContext
from .scopes import api_routes

log = logging.getLogger(__name__)
CREATED = re.compile(r"^/(jobs|prefetch|nodes)/([^/?]+)$")


def _specs(app: FastAPI) -> dict[Any, tuple[str, str]]:
    specs: dict[Any, tuple[str, str]] = {}
    for route in api_routes(app.routes):
        spec = (route.openapi_extra or {}).get("x-audit")
        if spec:
            specs[route.endpoint] = (spec["action"], spec["code"])
    return specs


def _outcome(status_code: int) -> str:
    if status_code < 400:
        return audit.SUCCESS
    return audit.REFUSED if status_code == 403 else audit.FAILED


def _write(
    ctx: ApiContext,
    actor: audit.Actor,
    action: tuple[str, str],
    params: dict[str, Any],
    query: str,
    status_code: int,
    location: str | None,
) -> None:
    objects: dict[str, Any] = {}
    detail = f"HTTP {status_code}"
    created = CREATED.match(location or "")
    with ctx.sessions() as session:
        job_id = params.get("job_id") or (created[2] if created and created[1] == "jobs" else None)
        prefetch_id = params.get("prefetch_id") or (
            created[2] if created and created[1] == "prefetch" else None
        )
        if job_id is not None and str(job_id).isdigit():
            objects = audit.job_objects(session, int(job_id))
        elif prefetch_id is not None and str(prefetch_id).isdigit():
            objects = audit.prefetch_objects(session, int(prefetch_id))
            detail = f"{objects.pop('detail')}; {detail}"
    name = params.get("name") or (created[2] if created and created[1] == "nodes" else None)
    if name is not None and action[0].startswith("node."):
        objects["node"] = str(name)
    elif name is not None:
        detail = f"{action[0].split('.')[0]} {name}; {detail}"
    if query:
        detail = f"{detail}; query {query[:500]}"
    audit.write(
        ctx.sessions,
        actor,
        audit.Event(action[0], action[1], _outcome(status_code), detail=detail, **objects),
    )


def install(app: FastAPI) -> None:
    specs: dict[Any, tuple[str, str]] | None = None

    @app.middleware("http")
    async def audit_trail(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        nonlocal specs
        response = await call_next(request)
        if specs is None:
            specs = _specs(app)
        action = specs.get(request.scope.get("endpoint"))
        token = getattr(request.state, "token_name", None)
        if action is None or token is None:
            return response
        client = request.client.host if request.client else None
        try:
            await run_in_threadpool(
                _write,
                request.app.state.qrfarm,
                audit.Actor("token", token, client),
                action,
                dict(request.path_params),
                request.url.query,
                response.status_code,
                response.headers.get("location"),
            )
        except Exception as exc:  # noqa: BLE001 - the answer stands; the gap is logged
            log.error("audit row for %s not written: %s", action[0], type(exc).__name__)
        return response
