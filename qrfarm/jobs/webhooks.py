"""Delivering webhook notifications from the outbox, signed, retried with backoff.

Each delivery is claimed in a short transaction (its next attempt is pushed
past the request's timeout, so a second scheduler does not send it at the
same time), POSTed outside any transaction, and its outcome recorded in
another: a 2xx ends it, anything else schedules the next attempt, until the
limit. Every attempt is a row. A scheduler that dies mid-POST leaves the
claim to expire and the delivery is sent again: receivers get at least one
delivery and should use ``X-Qrfarm-Delivery`` to drop repeats.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import random
import time
from dataclasses import dataclass, field

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.config import Settings
from qrfarm.models import DeliveryState, WebhookAttempt, WebhookDelivery, utcnow

SIGNATURE_HEADER = "X-Qrfarm-Signature"
DELIVERY_HEADER = "X-Qrfarm-Delivery"
EVENT_HEADER = "X-Qrfarm-Event"
BATCH = 20


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value: ``sha256=`` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str) -> bool:
    """What a receiver does: compare in constant time."""
    return hmac.compare_digest(sign(secret, body), header)


@dataclass(frozen=True)
class DeliveryPolicy:
    secret: bytes
    max_attempts: int = 12
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 600.0
    timeout_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveryPolicy | None:
        if settings.webhook_secret is None:
            return None
        return cls(
            secret=settings.webhook_secret.get_secret_value().encode(),
            max_attempts=settings.webhook_max_attempts,
            backoff_base_s=settings.webhook_backoff_base_s,
            backoff_cap_s=settings.webhook_backoff_cap_s,
            timeout_s=settings.webhook_timeout_s,
        )

    def backoff(self, attempt: int) -> float:
        """Exponential back-off with equal jitter (between half the ceiling and the
        ceiling): senders spread out after a receiver's outage, and none retries at once."""
        ceiling = min(self.backoff_cap_s, self.backoff_base_s * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


@dataclass
class DeliveryReport:
    delivered: list[int] = field(default_factory=list)
    retrying: list[int] = field(default_factory=list)
    gave_up: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class _Claimed:
    id: int
    event: str
    url: str
    body: str
    attempt: int


def _claim(sessions: sessionmaker[Session], policy: DeliveryPolicy) -> list[_Claimed]:
    now = utcnow()
    with sessions() as session, session.begin():
        rows = session.scalars(
            select(WebhookDelivery)
            .where(
                WebhookDelivery.state == DeliveryState.PENDING,
                WebhookDelivery.next_attempt_at <= now,
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        ).all()
        claimed = []
        for row in rows:
            row.attempt_count += 1
            row.next_attempt_at = now + dt.timedelta(seconds=policy.timeout_s * 3)
            claimed.append(_Claimed(row.id, row.event, row.url, row.body, row.attempt_count))
        return claimed


def _post(client: httpx.Client, policy: DeliveryPolicy, item: _Claimed) -> tuple[int | None, str]:
    body = item.body.encode()
    try:
        response = client.post(
            item.url,
            content=body,
            headers={
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(policy.secret, body),
                DELIVERY_HEADER: str(item.id),
                EVENT_HEADER: item.event,
            },
        )
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if 200 <= response.status_code < 300:
        return response.status_code, ""
    return response.status_code, f"HTTP {response.status_code}: {response.text[:200]}"


def _record(
    sessions: sessionmaker[Session],
    policy: DeliveryPolicy,
    item: _Claimed,
    status: int | None,
    error: str,
    duration_ms: int,
    report: DeliveryReport,
) -> None:
    with sessions() as session, session.begin():
        row = session.get_one(WebhookDelivery, item.id, with_for_update=True)
        session.add(
            WebhookAttempt(
                delivery_id=item.id,
                number=item.attempt,
                status_code=status,
                error=error or None,
                duration_ms=duration_ms,
            )
        )
        now = utcnow()
        if not error:
            row.state = DeliveryState.DELIVERED
            row.ended_at = now
            report.delivered.append(item.id)
        elif row.attempt_count >= policy.max_attempts:
            row.state = DeliveryState.GAVE_UP
            row.ended_at = now
            report.gave_up.append(item.id)
        else:
            row.next_attempt_at = now + dt.timedelta(seconds=policy.backoff(row.attempt_count))
            report.retrying.append(item.id)


def deliver_due(sessions: sessionmaker[Session], policy: DeliveryPolicy) -> DeliveryReport:
    """Send every delivery that is due, once each."""
    report = DeliveryReport()
    claimed = _claim(sessions, policy)
    if not claimed:
        return report
    # No redirects: a receiver cannot send the signed body somewhere the
    # allow-list did not check.
    # Nor proxies from the environment: the allow-list checked the URL itself.
    with httpx.Client(timeout=policy.timeout_s, follow_redirects=False, trust_env=False) as client:
        for item in claimed:
            started = time.monotonic()
            status, error = _post(client, policy, item)
            duration_ms = int((time.monotonic() - started) * 1000)
            _record(sessions, policy, item, status, error, duration_ms, report)
    return report
