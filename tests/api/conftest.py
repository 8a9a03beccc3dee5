"""The API in front of a real farm: `qrfarm api`, workers, scheduler and SCP as
processes, on Redis and PostgreSQL, with a token, and a webhook receiver."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from qrfarm.api import tokens
from tests.farm.conftest import Farm, make_farm
from tests.peers.ports import free_port, wait_for_port

# "whsec_" and a base64 key, as Standard Webhooks has it.
WEBHOOK_SECRET = "whsec_cXJmYXJtLXRlc3RzLXdlYmhvb2stc2lnbmluZy1rZXkh"


@dataclass
class ApiFarm:
    farm: Farm
    port: int
    token: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def http(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, trust_env=False)

    def issue(self, name: str, scopes: tuple[str, ...] = tokens.ALL_SCOPES) -> str:
        with self.farm.client.sessions() as session, session.begin():
            return tokens.issue(session, name, scopes)

    def revoke(self, name: str) -> None:
        with self.farm.client.sessions() as session, session.begin():
            tokens.revoke(session, name)


def start_api(farm: Farm) -> ApiFarm:
    port = free_port()
    farm.env["QRFARM_API_PORT"] = str(port)
    process = farm.start("api", "api")
    if not wait_for_port(port, timeout=30, still_running=lambda: process.poll() is None):
        pytest.fail("qrfarm api did not start:\n" + farm.logs())
    api = ApiFarm(farm, port, "")
    api.token = api.issue("tests")
    return api


@pytest.fixture
def api_farm(tmp_path: Path, qrfarm_scp_port: int) -> Iterator[ApiFarm]:
    """Redis + PostgreSQL, webhooks enabled; the test starts the SCP and workers it needs."""
    with make_farm("redis-postgresql", tmp_path, qrfarm_scp_port) as farm:
        farm.env["QRFARM_WEBHOOK_SECRET"] = WEBHOOK_SECRET
        farm.env["QRFARM_WEBHOOK_BACKOFF_BASE_S"] = "0.5"
        farm.env["QRFARM_WEBHOOK_BACKOFF_CAP_S"] = "1"
        yield start_api(farm)


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """An HTTP server on loopback that records every POST; it can go down and come back."""

    port: int = field(default_factory=free_port)
    deliveries: list[Delivery] = field(default_factory=list)
    answer_status: int = 204
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/qrfarm"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.deliveries.append(Delivery(self.path, dict(self.headers), body))
                self.send_response(receiver.answer_status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver()
    hook.start()
    try:
        yield hook
    finally:
        hook.stop()
