"""Limits in front of every route, as ASGI middleware: body size and request rate.

Both act before FastAPI parses a body or checks a token (FastAPI reads the
whole body of a request before its dependencies run, so an unauthenticated
100 MB POST used to be held in memory, several times over, before its 401).

- :class:`BodyLimit` answers 413 to a body past the limit: at once when its
  Content-Length says so, else as soon as the bytes counted while it streams
  (chunked) pass it. Nothing past the limit is read.
- :class:`RateLimit` keeps a token bucket per bearer token (anonymous
  callers: per client address) and answers 429 with Retry-After when it is
  empty. The buckets live in Redis when the farm has one, so that several API
  processes spend from the same bucket; else, or while Redis cannot be
  reached, in the process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from contextlib import suppress
from dataclasses import dataclass, field

import redis
import redis.asyncio as aioredis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qrfarm.errors import BodyTooLarge

log = logging.getLogger(__name__)
# In-process buckets kept at most; beyond it full ones (as good as absent) go.
MAX_LOCAL_BUCKETS = 10_000
REDIS_TIMEOUT_S = 1.0
# While Redis fails, it is tried again after this long (the process's own
# buckets stand in meanwhile).
REDIS_RETRY_AFTER_S = 10.0


async def answer(
    send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value)
    return None


class BodyLimit:
    """413 for a request body larger than ``max_bytes``, before it is read past that."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def refuse(self, send: Send) -> None:
        # Connection: close, so that the sender stops rather than the server
        # reading the rest of the body only to drop it.
        detail = f"{BodyTooLarge(self.max_bytes)} (QRFARM_API_MAX_BODY_BYTES)"
        await answer(send, 413, detail, [(b"connection", b"close")])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            await self.refuse(send)
            return
        received = 0
        refused = False
        started = False

        async def counted_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if not started:
                        refused = True
                        await self.refuse(send)
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 was the answer; whatever the route made of it is not
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        # Answered 413 above (or the response had already begun).
        with suppress(BodyTooLarge):
            await self.app(scope, counted_receive, guarded_send)


@dataclass
class LocalBuckets:
    """Token buckets in this process: key -> (tokens, when last counted)."""

    rate: float
    burst: int
    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def take(self, key: str) -> float:
        """Spend one from ``key``'s bucket: 0 when allowed, else seconds to wait."""
        now = time.monotonic()
        tokens, at = self.buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self.buckets[key] = (tokens, now)
        if len(self.buckets) > MAX_LOCAL_BUCKETS:
            self._forget_full(now)
        return wait

    def _forget_full(self, now: float) -> None:
        for key, (tokens, at) in list(self.buckets.items()):
            if tokens + (now - at) * self.rate >= self.burst:
                del self.buckets[key]


# One bucket as a hash {tokens, at}, refilled by Redis's own clock (the same
# for every API process), spent atomically; it expires once it would be full.
TAKE_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return tostring(wait)
"""


class RedisBuckets:
    """The same buckets in Redis, shared by every API process of the farm."""

    def __init__(self, url: str, rate: float, burst: int) -> None:
        self.url = url
        self.rate = rate
        self.burst = burst
        self._client: aioredis.Redis | None = None

    async def take(self, key: str) -> float:
        if self._client is None:
            # Made on first use, inside the server's event loop.
            self._client = aioredis.Redis.from_url(
                self.url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
            )
        wait = await self._client.eval(
            TAKE_SCRIPT, 1, f"qrfarm:rate:{key}", str(self.rate), str(self.burst)
        )
        return float(wait)


def address_key(scope: Scope) -> str:
    client = scope.get("client")
    return f"addr:{client[0] if client else 'unknown'}"


def bucket_key(scope: Scope) -> str:
    """The caller a request is counted against: its bearer token (by digest,
    never the text), else its address."""
    authorization = _header(scope, b"authorization") or b""
    scheme, _, credentials = authorization.partition(b" ")
    if scheme.lower() == b"bearer" and credentials.strip():
        return "token:" + hashlib.sha256(credentials.strip()).hexdigest()[:32]
    return address_key(scope)


class RateLimit:
    """429 with Retry-After once a caller's bucket is empty."""

    def __init__(
        self, app: ASGIApp, rate_per_s: float, burst: int, redis_url: str | None = None
    ) -> None:
        self.app = app
        self.rate = rate_per_s
        self.burst = burst
        self.local = LocalBuckets(rate_per_s, burst)
        self.shared = RedisBuckets(redis_url, rate_per_s, burst) if redis_url else None
        self._shared_failed_at: float | None = None
        # Token digests answered other than 401 lately (bounded: cleared when full).
        self.accepted: set[str] = set()

    def _noting_accepted(self, key: str, send: Send) -> Send:
        if not key.startswith("token:") or key in self.accepted:
            return send

        async def noting(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] != 401:
                if len(self.accepted) >= 10_000:
                    self.accepted.clear()
                self.accepted.add(key)
            await send(message)

        return noting

    async def _wait(self, key: str) -> float:
        if self.shared is not None:
            failed_at = self._shared_failed_at
            if failed_at is None or time.monotonic() - failed_at > REDIS_RETRY_AFTER_S:
                try:
                    wait = await self.shared.take(key)
                except (redis.RedisError, OSError) as exc:
                    if failed_at is None:
                        log.warning("rate limits kept in this process: Redis failed: %s", exc)
                    self._shared_failed_at = time.monotonic()
                else:
                    if failed_at is not None:
                        log.info("rate limits kept in Redis again")
                    self._shared_failed_at = None
                    return wait
        return self.local.take(key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.rate <= 0:
            await self.app(scope, receive, send)
            return
        key = bucket_key(scope)
        wait = await self._wait(key)
        if wait <= 0 and key.startswith("token:") and key not in self.accepted:
            # A token not yet seen accepted also takes from a bucket of its
            # address kept for unproven tokens: otherwise each invented token
            # would bring a full bucket of its own.
            wait = await self._wait("unproven:" + address_key(scope))
        if wait <= 0:
            await self.app(scope, receive, self._noting_accepted(key, send))
            return
        retry_after = max(1, math.ceil(wait))
        detail = (
            f"rate limit reached: {self.rate:g} requests per second, {self.burst} at once, "
            f"per token (QRFARM_API_RATE_PER_S, QRFARM_API_RATE_BURST); "
            f"retry after {retry_after} s"
        )
        await answer(send, 429, detail, [(b"retry-after", str(retry_after).encode())])
