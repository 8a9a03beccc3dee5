"""What every route needs: the database, the dispatcher, the settings, and a valid token."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.config import Settings
from qrfarm.jobs.dispatch import Dispatcher
from qrfarm.jobs.submit import SubmitRules

from .tokens import authenticate, scopes_of


@dataclass
class ApiContext:
    """Made once by create_app and kept on ``app.state``."""

    settings: Settings
    sessions: sessionmaker[Session]
    dispatcher: Dispatcher
    rules: SubmitRules
    metrics: CollectorRegistry


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.qrfarm
    return ctx


Context = Annotated[ApiContext, Depends(context)]


def session(ctx: Context) -> Iterator[Session]:
    with ctx.sessions() as db:
        yield db


# Closed when the route function returns, before the answer is sent: on
# SQLite every transaction takes the write lock (BEGIN IMMEDIATE), and the
# audit row written after the answer must not wait for this one.
Db = Annotated[Session, Depends(session, scope="function")]

bearer = HTTPBearer(auto_error=False, description="A token from `qrfarm token create`.")


def require_token(
    ctx: Context,
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """The token's name; 401 for a missing, unknown or revoked token, before anything runs.

    The name and the token's scopes are kept on ``request.state`` (``token_name``,
    ``token_scopes``) for the scope check and the audit trail.
    """
    unauthorized = HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail="a valid bearer token is required",
        headers={"WWW-Authenticate": "Bearer"},
    )
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise unauthorized
    with ctx.sessions() as db:
        row = authenticate(db, credentials.credentials)
        if row is None:
            raise unauthorized
        request.state.token_name = row.name
        request.state.token_scopes = scopes_of(row)
        return row.name
