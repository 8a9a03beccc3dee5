"""The operator console: pages in the browser, served by the API process.

Server-rendered templates and a little plain JavaScript (live progress by
server-sent events); nothing is fetched from elsewhere. Signing in takes an
API token; its scopes decide what is shown and allowed, as in the API:
``read`` to look, ``submit`` for job actions, ``admin`` for nodes, rules and
orphans. Every action goes through qrfarm.client.Client or the jobs and
workflow functions the API and the command line use, and is audited.
"""

from __future__ import annotations

import secrets

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from qrfarm.client import Client
from qrfarm.errors import NotSignedIn

from . import views_bulk, views_jobs, views_pages, views_workflow
from .context import HERE, ConsoleContext, make_templates


def mount(app: FastAPI, client: Client) -> None:
    """Add the console's pages to the API application (under /console)."""
    settings = client.settings
    secret = settings.console_secret
    app.state.console = ConsoleContext(
        client=client,
        # Without a configured secret, sessions last as long as this process.
        key=secret.get_secret_value().encode() if secret else secrets.token_bytes(32),
        session_max_age_s=settings.console_session_s,
        templates=make_templates(),
    )
    app.include_router(views_pages.router)
    app.include_router(views_jobs.router)
    app.include_router(views_bulk.router)
    app.include_router(views_workflow.router)
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")

    @app.exception_handler(NotSignedIn)
    async def to_sign_in(request: Request, _exc: NotSignedIn) -> Response:
        if request.method != "GET":
            return Response("sign in first", status_code=401, media_type="text/plain")
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/console/login?next={_quote(target)}", status_code=303)


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


__all__ = ["mount"]
