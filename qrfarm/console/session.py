"""Signing in to the console: an API token, once, turned into a signed session cookie.

The cookie (HttpOnly, SameSite=Strict, Secure under HTTPS, path /console)
holds a random session id, the token's row id, a CSRF token and an expiry,
signed with HMAC-SHA256; never the token itself. Each request looks the
session and its token up again (``console_sessions``, by the id's SHA-256: the
table holds live sessions only), so signing out, a revoked token or a
changed scope takes effect at once, for every copy of the cookie. Every POST
carries the CSRF token in a form field (or the X-CSRF-Token header), compared
in constant time.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Response, status
from sqlalchemy import delete, or_, select

from qrfarm.api.tokens import Scope, authenticate, scopes_of
from qrfarm.errors import NotSignedIn, SignInRefused
from qrfarm.models import ApiToken, ConsoleSession, utcnow
from qrfarm.workflow import audit

from .context import ConsoleContext, console_context

SESSION_COOKIE = "qrfarm_console"
LOGIN_COOKIE = "qrfarm_console_login"
FLASH_COOKIE = "qrfarm_console_flash"
COOKIE_PATH = "/console"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
# Live sessions of one token at most: a new sign-in ends the oldest beyond.
MAX_SESSIONS_PER_TOKEN = 20


@dataclass(frozen=True)
class ConsoleUser:
    token_id: int
    session_hash: str
    name: str
    scopes: frozenset[Scope]
    csrf: str
    client: str | None

    def can(self, scope: Scope) -> bool:
        return scope in self.scopes


def sign(key: bytes, payload: dict[str, Any]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode())
    mac = hmac.new(key, body, hashlib.sha256).digest()
    return f"{body.decode()}.{base64.urlsafe_b64encode(mac).decode()}"


def unsign(key: bytes, value: str | None) -> dict[str, Any] | None:
    """The payload of a cookie this console signed, or None (absent, forged, expired)."""
    if not value or len(value) > 4096 or value.count(".") != 1:
        return None
    body, mac = value.split(".")
    expected = base64.urlsafe_b64encode(hmac.new(key, body.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(expected, mac.encode()):
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(body))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("exp"), int | float):
        return None
    if payload["exp"] < time.time():
        return None
    return payload


def set_cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def start_session(ctx: ConsoleContext, request: Request, response: Response, token: str) -> None:
    """Check ``token``, record a session, audit the sign-in and set the cookie;
    SignInRefused, with what to show, if refused. The session this browser
    had is ended, and so are the oldest of the token's beyond
    MAX_SESSIONS_PER_TOKEN; expired ones are removed on the way."""
    session_id = secrets.token_urlsafe(32)
    earlier = _session_hash(ctx, request)
    client = request.client.host if request.client else None
    now = utcnow()
    with ctx.client.sessions() as db, db.begin():
        row = authenticate(db, token)
        if row is None:
            raise SignInRefused("That token is not known, or it was revoked.", 401)
        if Scope.READ not in scopes_of(row):
            raise SignInRefused("That token lacks the scope 'read' that the console needs.", 403)
        stale = ConsoleSession.expires_at < now
        if earlier is not None:
            stale = or_(stale, ConsoleSession.id_hash == earlier)
        db.execute(delete(ConsoleSession).where(stale))
        db.add(
            ConsoleSession(
                id_hash=_hash(session_id),
                token_id=row.id,
                created_at=now,
                expires_at=now + dt.timedelta(seconds=ctx.session_max_age_s),
            )
        )
        db.flush()
        oldest = (
            select(ConsoleSession.id_hash)
            .where(ConsoleSession.token_id == row.id)
            .order_by(ConsoleSession.created_at.desc())
            .offset(MAX_SESSIONS_PER_TOKEN)
        )
        db.execute(delete(ConsoleSession).where(ConsoleSession.id_hash.in_(oldest)))
        audit.record(
            db,
            audit.Actor("token", row.name, client),
            audit.Event("console.sign_in", audit.EXECUTE, detail="console"),
        )
        token_id = row.id
    payload = {
        "sid": session_id,
        "tid": token_id,
        "csrf": secrets.token_urlsafe(24),
        "exp": int(time.time()) + ctx.session_max_age_s,
    }
    set_cookie(response, request, SESSION_COOKIE, sign(ctx.key, payload), ctx.session_max_age_s)


def end_session(ctx: ConsoleContext, user: ConsoleUser, response: Response) -> None:
    """End ``user``'s session (every copy of its cookie), audited once, and
    remove the cookie (also when the database cannot be reached)."""
    try:
        with ctx.client.sessions() as db, db.begin():
            ended = db.execute(
                delete(ConsoleSession).where(ConsoleSession.id_hash == user.session_hash)
            )
            if getattr(ended, "rowcount", 0) == 1:
                audit.record(
                    db,
                    audit.Actor("token", user.name, user.client),
                    audit.Event("console.sign_out", audit.EXECUTE, detail="console"),
                )
    finally:
        response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)


def _session_hash(ctx: ConsoleContext, request: Request) -> str | None:
    """The hash of the session the request's cookie names, if it is one of ours."""
    payload = unsign(ctx.key, request.cookies.get(SESSION_COOKIE))
    sid = None if payload is None else payload.get("sid")
    return _hash(sid) if isinstance(sid, str) else None


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def signed_in(request: Request) -> ConsoleUser:
    """The live session's token, looked up again, whatever its scopes;
    NotSignedIn without a live one."""
    ctx = console_context(request)
    payload = unsign(ctx.key, request.cookies.get(SESSION_COOKIE))
    session_hash = _session_hash(ctx, request)
    if payload is None or not isinstance(payload.get("tid"), int) or session_hash is None:
        raise NotSignedIn
    with ctx.client.sessions() as db:
        row = db.scalar(
            select(ApiToken)
            .join(ConsoleSession, ConsoleSession.token_id == ApiToken.id)
            .where(
                ConsoleSession.id_hash == session_hash,
                ConsoleSession.expires_at > utcnow(),
                ApiToken.id == payload["tid"],
            )
        )
        if row is None or row.revoked_at is not None:
            raise NotSignedIn
        name, scopes = row.name, scopes_of(row)
    user = ConsoleUser(
        payload["tid"],
        session_hash,
        name,
        scopes,
        str(payload.get("csrf", "")),
        request.client.host if request.client else None,
    )
    request.state.console_user = user
    return user


def current_user(request: Request) -> ConsoleUser:
    """The signed-in token, which must hold ``read`` (every page needs it)."""
    user = signed_in(request)
    if Scope.READ not in user.scopes:
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN,
            detail="this token lacks the scope 'read' that the console needs",
        )
    return user


User = Annotated[ConsoleUser, Depends(current_user)]


async def _form_csrf(request: Request) -> str:
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    form = await request.form()
    value = form.get(CSRF_FIELD)
    return value if isinstance(value, str) else ""


def _check_csrf(sent: str, user: ConsoleUser) -> None:
    if not sent or not hmac.compare_digest(sent.encode(), user.csrf.encode()):
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN,
            detail="the form's CSRF token is missing or wrong: reload the page",
        )


def needs(scope: Scope) -> Any:
    """A POST's dependency: signed in, holding ``scope``, and the CSRF token sent."""

    async def check(request: Request, user: User) -> ConsoleUser:
        _check_csrf(await _form_csrf(request), user)
        if scope not in user.scopes:
            raise HTTPException(
                status_code=status.HTTP_403_FORBIDDEN,
                detail=f"this token lacks the scope {scope.value!r} that this action needs",
            )
        return user

    return Depends(check)


async def _signing_out(
    request: Request, user: Annotated[ConsoleUser, Depends(signed_in)]
) -> ConsoleUser:
    """Signing out: a live session and its CSRF token, whatever the token's scopes
    now (a token that lost ``read`` can still end its sessions)."""
    _check_csrf(await _form_csrf(request), user)
    return user


SigningOut = Annotated[ConsoleUser, Depends(_signing_out)]


def flash(ctx: ConsoleContext, request: Request, response: Response, text: str) -> None:
    """A message shown once by the next page (a signed cookie of its own)."""
    payload = {"text": text[:500], "exp": int(time.time()) + 60}
    set_cookie(response, request, FLASH_COOKIE, sign(ctx.key, payload), 60)


def take_flash(ctx: ConsoleContext, request: Request) -> str | None:
    payload = unsign(ctx.key, request.cookies.get(FLASH_COOKIE))
    text = payload.get("text") if payload else None
    return text if isinstance(text, str) else None
