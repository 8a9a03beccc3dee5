"""Standard Webhooks signatures (https://www.standardwebhooks.com).

Each delivery carries ``webhook-id`` (the same on every retry of one
notification), ``webhook-timestamp`` (Unix seconds, when this attempt was
signed) and ``webhook-signature``: ``v1,`` and the base64 HMAC-SHA256 of
``id.timestamp.body`` keyed with the secret, which is ``whsec_`` and the key
in base64. A receiver rejects a timestamp further than its tolerance from
its clock, and a signature it has already accepted (a replay).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

PREFIX = "whsec_"
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
TOLERANCE_S = 300


def new_secret() -> str:
    """A fresh secret: ``whsec_`` and 32 random bytes in base64."""
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The key a ``whsec_`` secret holds; ValueError saying what is wrong with it."""
    if not secret.startswith(PREFIX):
        raise ValueError(
            f"a webhook secret starts with {PREFIX!r} (qrfarm webhook-secret prints one)"
        )
    try:
        key = base64.b64decode(secret.removeprefix(PREFIX), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"a webhook secret is {PREFIX!r} and base64 ({exc})") from None
    if not 24 <= len(key) <= 64:
        raise ValueError(f"a webhook secret's key is 24 to 64 bytes, not {len(key)}")
    return key


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """``webhook-signature``: ``v1,`` and the base64 HMAC-SHA256 of ``id.timestamp.body``."""
    content = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers_for(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        ID_HEADER: message_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, message_id, timestamp, body),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance_s: int = TOLERANCE_S,
) -> bool:
    """Whether the headers sign this body with this secret, within the tolerance.
    (Replays inside the tolerance are the receiver's to remember: see the README.)"""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        message_id = lowered[ID_HEADER]
        timestamp = int(lowered[TIMESTAMP_HEADER])
        offered = lowered[SIGNATURE_HEADER].split()
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = sign(secret, message_id, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in offered)
