"""Rendering a page, and writing what a console user did to the audit trail."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from sqlalchemy.exc import SQLAlchemyError

from qrfarm.api.tokens import Scope
from qrfarm.models import ENDED_STATES
from qrfarm.workflow import audit

from .context import console_context
from .session import ConsoleUser, take_flash

log = logging.getLogger(__name__)

# Only the console's own script and style run; no page may frame it (clickjacking)
# and forms post only back to it.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def page(
    request: Request,
    template: str,
    user: ConsoleUser | None,
    *,
    title: str,
    section: str = "",
    status_code: int = 200,
    **values: Any,
) -> HTMLResponse:
    ctx = console_context(request)
    flash = take_flash(ctx, request)
    response = ctx.templates.TemplateResponse(
        request,
        template,
        {
            "user": user,
            "title": title,
            "section": section,
            "flash": flash,
            "ended": {s.value for s in ENDED_STATES},
            "can_submit": user is not None and user.can(Scope.SUBMIT),
            "can_admin": user is not None and user.can(Scope.ADMIN),
            **values,
        },
        status_code=status_code,
    )
    if flash is not None:
        response.delete_cookie("qrfarm_console_flash", path="/console")
    # Pages show patient-bearing data to a signed-in reader only: never cached.
    response.headers["Cache-Control"] = "no-store"
    response.headers.update(SECURITY_HEADERS)
    return response


def note(
    request: Request,
    user: ConsoleUser,
    action: str,
    code: str,
    *,
    job_id: int | None = None,
    node: str | None = None,
    outcome: str = audit.SUCCESS,
    detail: str | None = None,
) -> None:
    """One audit row for an action, as the API writes one: the token, the client's
    address, the job (its node, patient and study) or node, the outcome."""
    ctx = console_context(request)
    sessions = ctx.client.sessions
    actor = audit.Actor("token", user.name, user.client)
    try:
        objects: dict[str, Any] = {}
        if job_id is not None:
            with sessions() as session:
                objects = audit.job_objects(session, job_id)
        if node is not None:
            objects["node"] = node
        audit.write(
            sessions,
            actor,
            audit.Event(
                action, code, outcome, detail=f"console; {detail or ''}".strip("; "), **objects
            ),
        )
    except SQLAlchemyError as exc:
        log.error("audit row for %s not written: %s", action, type(exc).__name__)
