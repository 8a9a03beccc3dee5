"""Per-node association permits that hold across the whole farm.

A worker takes a permit before it associates and keeps it while the
association is open. A permit frees itself when its holder dies: a Redis
key with a TTL in a farm, renewed by its holder while held, idle or in use
(qrfarm.workers.pool); an flock()ed file on one machine (the kernel drops
the lock with the process).
"""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from pathlib import Path
from typing import Protocol

import redis

PERMIT_TTL_S = 60.0
# How long a wait for a node's permit asks idle holders to let go: a waiter
# renews the request while it waits, so no longer than a task waits for a
# permit (qrfarm.workers.pool.PERMIT_WAIT_S), or holders would close
# associations for a waiter that has given up.
WANTED_S = 1.0


class Permit(Protocol):
    node: str
    slot: int

    def renew(self) -> bool: ...

    def release(self) -> None: ...


class Permits(Protocol):
    # How long a permit lives unless renewed: its holder renews well within it.
    ttl_s: float

    def acquire(
        self, node: str, limit: int, wait_s: float, *, ask_holders: bool = True
    ) -> Permit | None:
        """One of the node's permits, waiting up to ``wait_s``; while it waits
        (``ask_holders``) idle holders are asked to let go."""
        ...

    def held(self, node: str, limit: int) -> int:
        """How many of the node's permits are taken now, across the farm."""
        ...

    def wanted(self, node: str) -> bool:
        """Whether some worker waited for one of the node's permits just now:
        an idle pooled association to it should then give its permit back."""
        ...


class RedisPermit:
    # Compare-and-delete / compare-and-extend: never touch a permit that
    # expired and was taken by another worker meanwhile.
    _RELEASE = (
        "if redis.call('get', KEYS[1]) == ARGV[1] then "
        "return redis.call('del', KEYS[1]) end return 0"
    )
    _RENEW = (
        "if redis.call('get', KEYS[1]) == ARGV[1] then "
        "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
    )

    def __init__(
        self, client: redis.Redis, key: str, token: str, node: str, slot: int, ttl_s: float
    ) -> None:
        self.client, self.key, self.token, self.node, self.slot = client, key, token, node, slot
        self.ttl_s = ttl_s

    def renew(self) -> bool:
        return bool(self.client.eval(self._RENEW, 1, self.key, self.token, int(self.ttl_s * 1000)))

    def release(self) -> None:
        self.client.eval(self._RELEASE, 1, self.key, self.token)


class RedisPermits:
    def __init__(self, url: str, ttl_s: float = PERMIT_TTL_S, prefix: str = "qrfarm") -> None:
        self.client = redis.Redis.from_url(url)
        self.ttl_s = ttl_s
        self.prefix = prefix

    def acquire(
        self, node: str, limit: int, wait_s: float, *, ask_holders: bool = True
    ) -> RedisPermit | None:
        token = uuid.uuid4().hex
        deadline = time.monotonic() + wait_s
        while True:
            for slot in range(limit):
                key = f"{self.prefix}:permit:{node}:{slot}"
                if self.client.set(key, token, nx=True, px=int(self.ttl_s * 1000)):
                    return RedisPermit(self.client, key, token, node, slot, self.ttl_s)
            if ask_holders:
                self.client.set(f"{self.prefix}:wanted:{node}", "1", px=int(WANTED_S * 1000))
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def wanted(self, node: str) -> bool:
        return bool(self.client.exists(f"{self.prefix}:wanted:{node}"))

    def held(self, node: str, limit: int) -> int:
        keys = [f"{self.prefix}:permit:{node}:{slot}" for slot in range(limit)]
        return sum(1 for value in self.client.mget(keys) if value is not None)


class FilePermit:
    def __init__(self, fd: int, node: str, slot: int) -> None:
        self.fd, self.node, self.slot = fd, node, slot

    def renew(self) -> bool:
        return True  # held until released or the process dies

    def release(self) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


class FilePermits:
    # Held until released or the process dies: renewing is only a formality.
    ttl_s = PERMIT_TTL_S

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def wanted(self, node: str) -> bool:
        try:
            age = time.time() - (self.directory / f"{node}.wanted").stat().st_mtime
        except FileNotFoundError:
            return False
        return age < WANTED_S

    def acquire(
        self, node: str, limit: int, wait_s: float, *, ask_holders: bool = True
    ) -> FilePermit | None:
        deadline = time.monotonic() + wait_s
        while True:
            for slot in range(limit):
                path = self.directory / f"{node}.{slot}.lock"
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                return FilePermit(fd, node, slot)
            if ask_holders:
                (self.directory / f"{node}.wanted").touch()
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def held(self, node: str, limit: int) -> int:
        taken = 0
        for slot in range(limit):
            path = self.directory / f"{node}.{slot}.lock"
            if not path.exists():
                continue
            fd = os.open(path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
            except BlockingIOError:
                taken += 1
            finally:
                os.close(fd)
        return taken
