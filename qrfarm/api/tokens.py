"""Bearer tokens of the API: issued once, stored only as a SHA-256, revocable,
each with its scopes: ``read`` (jobs, results, instances, nodes, prefetches),
``submit`` (jobs, prefetches, cancel, retry), ``admin`` (nodes, rules, tokens,
the audit trail)."""

from __future__ import annotations

import enum
import hashlib
import secrets
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from qrfarm.errors import TokenError
from qrfarm.models import ApiToken, utcnow

PREFIX = "qrf_"


class Scope(enum.StrEnum):
    READ = "read"
    SUBMIT = "submit"
    ADMIN = "admin"


ALL_SCOPES = tuple(Scope)


def scope_text(scopes: Iterable[Scope | str]) -> str:
    """Scope names as stored: known, each once, in a fixed order, space-separated."""
    chosen = set()
    for scope in scopes:
        try:
            chosen.add(Scope(scope))
        except ValueError:
            known = ", ".join(s.value for s in Scope)
            raise TokenError(f"unknown scope {scope!r} (known: {known})") from None
    if not chosen:
        raise TokenError("a token needs at least one scope (read, submit, admin)")
    return " ".join(s.value for s in Scope if s in chosen)


def scopes_of(row: ApiToken) -> frozenset[Scope]:
    known = {s.value for s in Scope}
    return frozenset(Scope(s) for s in row.scopes.split() if s in known)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue(session: Session, name: str, scopes: Iterable[Scope | str]) -> str:
    """A new token named ``name`` with ``scopes``; the only time its text is seen."""
    stored = scope_text(scopes)
    name = name.strip()
    if not name or len(name) > 64:
        raise TokenError("a token name has 1 to 64 characters")
    if session.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
        raise TokenError(f"a token named {name!r} exists; revoke it or choose another name")
    token = PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, token_hash=token_hash(token), scopes=stored))
    session.flush()
    return token


def revoke(session: Session, name: str) -> None:
    row = session.scalar(select(ApiToken).where(ApiToken.name == name))
    if row is None:
        raise TokenError(f"no token named {name!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()


def set_scopes(session: Session, name: str, scopes: Iterable[Scope | str]) -> str:
    """Replace a token's scopes; returns them as stored."""
    row = session.scalar(select(ApiToken).where(ApiToken.name == name))
    if row is None:
        raise TokenError(f"no token named {name!r}")
    row.scopes = scope_text(scopes)
    return row.scopes


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
