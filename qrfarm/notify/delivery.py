"""Delivering webhook notifications from the outbox: checked, pinned, bounded, signed.

Each delivery is claimed in a short transaction (its next attempt pushed past
its deadline, so a second scheduler does not send it meanwhile), POSTed
outside any transaction, and its outcome recorded in another: a 2xx ends it,
a refused target gives it up at once, anything else schedules the next
attempt, until the limit. Every attempt is a row. A scheduler that dies
mid-POST leaves the claim to expire and the delivery is sent again: receivers
get at least one delivery and drop repeats by ``webhook-id``.

An attempt resolves the host and checks every address against the allow-list
(:mod:`qrfarm.notify.targets`) and connects to the first address checked,
never resolving again: the URL's host goes in the Host header and, for
https, in the TLS server name, and the certificate is verified against it.
The whole attempt, resolution included, has one deadline, and at most
``max_response_bytes`` of the answer are read. Deliveries run concurrently:
at most ``concurrency`` in all and ``per_destination`` per scheme, host and
port, and a delivery is claimed only when its destination has room, so one
receiver that never answers holds its own share and no more.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.config import Settings
from qrfarm.errors import TargetNotAllowed
from qrfarm.models import DeliveryState, WebhookAttempt, WebhookDelivery, utcnow

from .signing import headers_for
from .targets import check_webhook_host

log = logging.getLogger(__name__)

EVENT_HEADER = "X-Qrfarm-Event"
# How many due rows one claim looks through for destinations with room.
SCAN = 500
POLL_S = 0.5


@dataclass(frozen=True)
class DeliveryPolicy:
    secret: str
    allowed_hosts: tuple[str, ...] = ("*",)
    max_attempts: int = 12
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 600.0
    # Connecting, and each read and write; deadline_s bounds the whole attempt.
    timeout_s: float = 10.0
    deadline_s: float = 30.0
    max_response_bytes: int = 64 << 10
    concurrency: int = 16
    per_destination: int = 2
    # CA certificates for https receivers; unset: the system's.
    ca_file: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveryPolicy | None:
        if settings.webhook_secret is None:
            return None
        return cls(
            secret=settings.webhook_secret.get_secret_value(),
            allowed_hosts=tuple(settings.allowed_hosts),
            max_attempts=settings.webhook_max_attempts,
            backoff_base_s=settings.webhook_backoff_base_s,
            backoff_cap_s=settings.webhook_backoff_cap_s,
            timeout_s=settings.webhook_timeout_s,
            deadline_s=settings.webhook_deadline_s,
            max_response_bytes=settings.webhook_max_response_bytes,
            concurrency=settings.webhook_concurrency,
            per_destination=settings.webhook_per_destination,
            ca_file=settings.webhook_ca_file,
        )

    @property
    def claim_s(self) -> float:
        """How long a claimed delivery is left alone: past any attempt's end."""
        return self.deadline_s * 2 + 10

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
    message_id: str
    destination: str


@dataclass(frozen=True)
class _Outcome:
    status: int | None
    error: str = ""
    give_up: bool = False


def destination(url: str) -> str:
    """Scheme, host and port: what the per-destination bound counts."""
    try:
        parsed = httpx.URL(url)
        return f"{parsed.scheme}://{parsed.host}:{parsed.port or ''}"
    except httpx.InvalidURL:
        return url


def _claim(
    sessions: sessionmaker[Session], policy: DeliveryPolicy, busy: Counter[str]
) -> list[_Claimed]:
    free = policy.concurrency - sum(busy.values())
    if free <= 0:
        return []
    now = utcnow()
    claimed: list[_Claimed] = []
    taken: Counter[str] = Counter()
    with sessions() as session, session.begin():
        rows = session.scalars(
            select(WebhookDelivery)
            .where(
                WebhookDelivery.state == DeliveryState.PENDING,
                WebhookDelivery.next_attempt_at <= now,
            )
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
            .limit(SCAN)
            .with_for_update(skip_locked=True)
        ).all()
        for row in rows:
            if len(claimed) >= free:
                break
            where = destination(row.url)
            if busy[where] + taken[where] >= policy.per_destination:
                continue
            taken[where] += 1
            row.attempt_count += 1
            row.next_attempt_at = now + dt.timedelta(seconds=policy.claim_s)
            # The same on every retry, and not reused by a database started afresh.
            message_id = f"msg_{row.id}_{int(row.created_at.timestamp())}"
            claimed.append(
                _Claimed(row.id, row.event, row.url, row.body, row.attempt_count, message_id, where)
            )
    return claimed


async def _read_capped(response: httpx.Response, cap: int) -> bytes:
    """At most about ``cap`` bytes of the answer; its first 200 kept for the record."""
    kept = b""
    read = 0
    async for chunk in response.aiter_raw():
        if len(kept) < 200:
            kept += chunk[: 200 - len(kept)]
        read += len(chunk)
        if read >= cap:
            break
    return kept


async def _post(client: httpx.AsyncClient, policy: DeliveryPolicy, item: _Claimed) -> _Outcome:
    url = httpx.URL(item.url)
    host = url.raw_host.decode("ascii")
    try:
        addresses = await asyncio.to_thread(check_webhook_host, policy.allowed_hosts, host)
    except TargetNotAllowed as exc:
        return _Outcome(None, str(exc), give_up=True)
    pinned = url.copy_with(host=str(addresses[0]))
    body = item.body.encode()
    headers = {
        "Host": url.netloc.decode("ascii"),
        "Content-Type": "application/json",
        EVENT_HEADER: item.event,
        **headers_for(policy.secret, item.message_id, int(time.time()), body),
    }
    extensions = {"sni_hostname": host} if url.scheme == "https" else {}
    async with client.stream(
        "POST", pinned, content=body, headers=headers, extensions=extensions
    ) as response:
        excerpt = await _read_capped(response, policy.max_response_bytes)
    if 200 <= response.status_code < 300:
        return _Outcome(response.status_code)
    text = excerpt.decode("utf-8", "replace")
    return _Outcome(response.status_code, f"HTTP {response.status_code}: {text}")


async def _attempt(client: httpx.AsyncClient, policy: DeliveryPolicy, item: _Claimed) -> _Outcome:
    try:
        async with asyncio.timeout(policy.deadline_s):
            return await _post(client, policy, item)
    except TimeoutError:
        return _Outcome(None, f"no answer within the delivery deadline ({policy.deadline_s:g} s)")
    except httpx.HTTPError as exc:
        return _Outcome(None, f"{type(exc).__name__}: {exc}")


def _record(
    sessions: sessionmaker[Session],
    policy: DeliveryPolicy,
    item: _Claimed,
    outcome: _Outcome,
    duration_ms: int,
    report: DeliveryReport,
) -> None:
    with sessions() as session, session.begin():
        row = session.get_one(WebhookDelivery, item.id, with_for_update=True)
        session.add(
            WebhookAttempt(
                delivery_id=item.id,
                number=item.attempt,
                status_code=outcome.status,
                error=outcome.error or None,
                duration_ms=duration_ms,
            )
        )
        now = utcnow()
        if not outcome.error:
            row.state = DeliveryState.DELIVERED
            row.ended_at = now
            report.delivered.append(item.id)
        elif outcome.give_up or row.attempt_count >= policy.max_attempts:
            row.state = DeliveryState.GAVE_UP
            row.ended_at = now
            report.gave_up.append(item.id)
            log.warning("webhook %d given up after %d attempt(s)", item.id, item.attempt)
        else:
            row.next_attempt_at = now + dt.timedelta(seconds=policy.backoff(row.attempt_count))
            report.retrying.append(item.id)


def _client(policy: DeliveryPolicy) -> httpx.AsyncClient:
    context = ssl.create_default_context(
        cafile=str(policy.ca_file) if policy.ca_file is not None else None
    )
    # No redirects: a receiver cannot send the signed body somewhere the
    # allow-list did not check. No proxies from the environment either.
    return httpx.AsyncClient(
        verify=context,
        timeout=policy.timeout_s,
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_connections=policy.concurrency, max_keepalive_connections=0),
    )


class _Deliverer:
    """Claims what is due and has room, and sends each on its own task."""

    def __init__(self, sessions: sessionmaker[Session], policy: DeliveryPolicy) -> None:
        self.sessions = sessions
        self.policy = policy
        self.busy: Counter[str] = Counter()
        self.tasks: set[asyncio.Task[None]] = set()
        self.report = DeliveryReport()

    async def round(self, client: httpx.AsyncClient) -> None:
        claimed = await asyncio.to_thread(_claim, self.sessions, self.policy, Counter(self.busy))
        for item in claimed:
            self.busy[item.destination] += 1
            task = asyncio.create_task(self._one(client, item))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _one(self, client: httpx.AsyncClient, item: _Claimed) -> None:
        try:
            started = time.monotonic()
            outcome = await _attempt(client, self.policy, item)
            duration_ms = int((time.monotonic() - started) * 1000)
            await asyncio.to_thread(
                _record, self.sessions, self.policy, item, outcome, duration_ms, self.report
            )
        except Exception:
            # A database hiccup: the claim expires and the delivery is sent again.
            log.exception("webhook %d: recording its attempt failed", item.id)
        finally:
            self.busy[item.destination] -= 1

    async def drain(self) -> None:
        await asyncio.gather(*self.tasks, return_exceptions=True)


def deliver_due(sessions: sessionmaker[Session], policy: DeliveryPolicy) -> DeliveryReport:
    """Send what is due and has room, once each, and wait for those attempts."""

    async def once() -> DeliveryReport:
        deliverer = _Deliverer(sessions, policy)
        async with _client(policy) as client:
            await deliverer.round(client)
            await deliverer.drain()
        return deliverer.report

    return asyncio.run(once())


def run_deliveries(
    sessions: sessionmaker[Session],
    policy: DeliveryPolicy,
    stop: threading.Event,
    interval_s: float = POLL_S,
) -> None:
    """Deliver until ``stop`` is set, then let the attempts under way end."""

    async def loop() -> None:
        deliverer = _Deliverer(sessions, policy)
        async with _client(policy) as client:
            while not stop.is_set():
                try:
                    await deliverer.round(client)
                except Exception:
                    # The database out of reach: the outbox keeps everything.
                    log.exception("webhook claim failed")
                await asyncio.sleep(interval_s)
            await deliverer.drain()

    asyncio.run(loop())
