"""Bearer tokens of the API: issued once, stored only as a SHA-256, revocable."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from qrfarm.errors import TokenError
from qrfarm.models import ApiToken, utcnow

PREFIX = "qrf_"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue(session: Session, name: str) -> str:
    """A new token named ``name``; the only time its text is seen."""
    name = name.strip()
    if not name or len(name) > 64:
        raise TokenError("a token name has 1 to 64 characters")
    if session.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
        raise TokenError(f"a token named {name!r} exists; revoke it or choose another name")
    token = PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, token_hash=token_hash(token)))
    session.flush()
    return token


def revoke(session: Session, name: str) -> None:
    row = session.scalar(select(ApiToken).where(ApiToken.name == name))
    if row is None:
        raise TokenError(f"no token named {name!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()


def authenticate(session: Session, token: str) -> ApiToken | None:
    """The live token row for ``token``, or None (unknown or revoked).

    Looked up by its hash: the text itself is never compared or stored.
    """
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == token_hash(token)))
    if row is None or row.revoked_at is not None:
        return None
    return row


def listing(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.name)))
