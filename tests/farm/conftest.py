"""A farm of real processes for the tests: storage SCP, workers, scheduler.

Two shapes: Redis + PostgreSQL (the farm), and embedded (SQLite and the
filesystem broker, nothing else). Each test gets fresh databases and queues.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select

from qrfarm.client import Client
from qrfarm.config import Settings
from qrfarm.jobs.nodes import NodeSpec, upsert_node
from qrfarm.models import ReceivedInstance, upgrade
from qrfarm.sandbox.pacs import Behaviour, SandboxPacs
from qrfarm.sandbox.synthetic import Corpus
from tests.conftest import QRFARM_SCP_AE
from tests.databases import postgres_database
from tests.peers.ports import wait_for_port


def _farm_redis_url() -> str:
    """The machine's Redis, one database per test process: a farm flushes its
    database at start and end, so parallel test processes (pytest-xdist's
    gw0, gw1, ...) each get their own."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    number = int(worker.removeprefix("gw") or 0) if worker.startswith("gw") else 0
    return f"redis://127.0.0.1:6379/{9 + number % 4}"


REDIS_URL = os.environ.get("QRFARM_TEST_REDIS") or _farm_redis_url()


@dataclass
class Farm:
    root: Path
    env: dict[str, str]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _client: Client | None = None

    @property
    def settings(self) -> Settings:
        saved = dict(os.environ)
        os.environ.update(self.env)
        try:
            return Settings()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client.from_settings(self.settings)
        return self._client

    def start(
        self, name: str, *argv: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = self.root / f"{name}-{len(self.processes)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "qrfarm.cli", "-v", *argv],
                env={**os.environ, **self.env, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a kill takes its children
            )
        self.processes.append(process)
        return process

    def start_scp(self) -> subprocess.Popen[bytes]:
        process = self.start("scp", "scp")
        port = int(self.env["QRFARM_SCP_PORT"])
        if not wait_for_port(port, timeout=30, still_running=lambda: process.poll() is None):
            pytest.fail("qrfarm scp did not start:\n" + self.logs())
        return process

    def start_worker(self, *nodes: str, concurrency: int = 2) -> subprocess.Popen[bytes]:
        argv = ["worker", "--concurrency", str(concurrency)]
        for node in nodes:
            argv += ["--node", node]
        return self.start("worker", *argv)

    def register(self, spec: NodeSpec) -> None:
        with self.client.sessions() as session, session.begin():
            upsert_node(session, spec)

    def wait(self, job_id: int, timeout: float = 120) -> dict[str, Any]:
        try:
            return self.client.wait(job_id, timeout)
        except Exception:
            print(self.logs())
            raise

    def rows(self, job_id: int) -> list[ReceivedInstance]:
        with self.client.sessions() as session:
            return list(
                session.scalars(select(ReceivedInstance).where(ReceivedInstance.job_id == job_id))
            )

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name} ---\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.root.glob("*.log"))
        )

    def kill(self, process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        process.wait(30)

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                with_suppress_kill(process)
        if self._client is not None:
            self._client.close()


def with_suppress_kill(process: subprocess.Popen[bytes]) -> None:
    try:
        # The main process only: a Celery worker stops its own pool children.
        process.send_signal(signal.SIGTERM)
        process.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def _redis_ready(url: str) -> redis.Redis:
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis is not reachable at {url}: {exc}")
        pytest.skip(f"Redis is not reachable at {url}: {exc}")
    return client


@contextmanager
def make_farm(
    kind: str,
    root: Path,
    scp_port: int,
    broker_url: str | None = None,
    database_url: str | None = None,
) -> Iterator[Farm]:
    """A fresh farm; ``broker_url`` and ``database_url`` name a test's own Redis
    and PostgreSQL (to stop and start), else the machine's are used."""
    root.mkdir(parents=True, exist_ok=True)
    env = {
        "QRFARM_STORAGE_ROOT": str(root / "storage"),
        "QRFARM_DATA_DIR": str(root / "data"),
        "QRFARM_SCP_PORT": str(scp_port),
        "QRFARM_SCP_AE_TITLE": QRFARM_SCP_AE,
        "QRFARM_ALLOWED_HOSTS": "127.0.0.1",
        "QRFARM_RECONCILE_GRACE_S": "3",
        "QRFARM_SCHEDULER_INTERVAL_S": "0.5",
        "QRFARM_REDISPATCH_AFTER_S": "5",
        "QRFARM_LEASE_TTL_S": "6",
        "QRFARM_BACKOFF_BASE_S": "0.5",
        "QRFARM_BACKOFF_CAP_S": "2",
        "QRFARM_MAX_ATTEMPTS": "3",
        "QRFARM_CONFIG": str(root / "none.toml"),
    }
    if kind == "embedded":
        env["QRFARM_DATABASE_URL"] = f"sqlite:///{root / 'qrfarm.db'}"
        farm = Farm(root, env)
        upgrade(env["QRFARM_DATABASE_URL"])
        try:
            yield farm
        finally:
            farm.stop_all()
        return
    url = broker_url or REDIS_URL
    queues = _redis_ready(url)
    queues.flushdb()
    with _database(database_url) as database:
        env["QRFARM_DATABASE_URL"] = database
        env["QRFARM_BROKER_URL"] = url
        upgrade(database)
        farm = Farm(root, env)
        try:
            yield farm
        finally:
            farm.stop_all()
            with suppress(redis.RedisError):  # a test's own Redis may be stopped
                queues.flushdb()


@contextmanager
def _database(url: str | None) -> Iterator[str]:
    if url is not None:
        yield url
        return
    with postgres_database() as database:
        yield database


@contextmanager
def sandbox(
    corpus: Corpus, scp_port: int, find_delay_s: float = 0.0, retrieve_delay_s: float = 0.0
) -> Iterator[SandboxPacs]:
    """The pure-Python test PACS holding the corpus, moving to the farm's SCP."""
    pacs = SandboxPacs(
        [i.path for i in corpus.instances],
        destinations={QRFARM_SCP_AE: ("127.0.0.1", scp_port)},
        behaviour=Behaviour(find_delay_s, retrieve_delay_s),
    )
    pacs.port = pacs.start()  # type: ignore[attr-defined]
    try:
        yield pacs
    finally:
        pacs.stop()


def settle(seconds: float) -> None:
    time.sleep(seconds)
