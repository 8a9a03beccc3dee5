"""The API's limits, against `qrfarm api` as its own process on loopback.

Shown: a 100 MB unauthenticated POST, streamed (by Content-Length and
chunked), is answered 413 before the API reads it, and the API process's
resident memory does not grow by anything like its size; a token that spends
its burst gets 429 with Retry-After while another token is still served, and
with Redis two API processes spend from the same bucket; an anonymous /health
says only up or down, a token sees the checks; /metrics refuses a caller
without a token, and serves the farm's metrics without one only on its own
port when that is set; a page larger than the maximum is refused, naming it.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.farm.conftest import Farm, make_farm
from tests.peers.ports import LOCALHOST, free_port, wait_for_port

from .conftest import ApiFarm, start_api

MIB = 1 << 20
HUNDRED_MB = 100 * 1000 * 1000
BODY_LIMIT = 64 * 1024
# Far below the body sent; before the limit the API grew by about 3x the body.
RSS_GROWTH_ALLOWED = 16 * MIB
ANSWER_TIMEOUT_S = 30.0


@pytest.fixture
def farm(tmp_path: Path, qrfarm_scp_port: int) -> Iterator[Farm]:
    with make_farm("embedded", tmp_path, qrfarm_scp_port) as embedded:
        embedded.env["QRFARM_API_MAX_BODY_BYTES"] = str(BODY_LIMIT)
        yield embedded


def api_pid(api: ApiFarm) -> int:
    (process,) = [p for p in api.farm.processes if p.args[-1] == "api"]
    return process.pid


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def stream_post(port: int, path: str, size: int, *, chunked: bool) -> tuple[int, bytes, int]:
    """POST ``size`` bytes to ``path`` without a token, a MiB at a time from one
    buffer, stopping as soon as the server answers; (status, head, bytes sent)."""
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {LOCALHOST}:{port}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n"
    ).encode()
    block = b"[" * MIB
    sent = 0
    with socket.create_connection((LOCALHOST, port), timeout=ANSWER_TIMEOUT_S) as sock:
        sock.sendall(head)
        try:
            while sent < size:
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    break
                part = min(MIB, size - sent)
                if chunked:
                    sock.sendall(f"{part:x}\r\n".encode())
                sock.sendall(block[:part] if part < MIB else block)
                if chunked:
                    sock.sendall(b"\r\n")
                sent += part
            else:
                if chunked:
                    sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed after its answer: the answer is still to be read
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 "), answer[:200]
    return int(status_line.split()[1]), answer, sent


def start_another_api(api: ApiFarm) -> ApiFarm:
    """A second API process of the same farm, on its own port, taking the same token."""
    port = free_port()
    process = api.farm.start("api", "api", env={"QRFARM_API_PORT": str(port)})
    if not wait_for_port(port, timeout=30, still_running=lambda: process.poll() is None):
        pytest.fail("the second qrfarm api did not start:\n" + api.farm.logs())
    return ApiFarm(api.farm, port, api.token)


def test_a_100_mb_unauthenticated_post_is_refused_413_before_it_is_read(farm: Farm) -> None:
    api = start_api(farm)
    pid = api_pid(api)
    with api.http() as http:
        # Whatever a first request loads is loaded before the measure.
        for _ in range(3):
            assert http.get("/nodes").status_code == 200
            assert http.post("/jobs", json={"kind": "find"}).status_code == 422
        before = rss_bytes(pid)
        for chunked in (False, True):
            status, answer, sent = stream_post(api.port, "/jobs", HUNDRED_MB, chunked=chunked)
            assert status == 413, answer[:300]
            assert sent < HUNDRED_MB, "the whole body was read before the answer"
        grown = rss_bytes(pid) - before
        assert grown < RSS_GROWTH_ALLOWED, f"API grew by {grown / MIB:.1f} MiB"
        # A body within the limit is still parsed and checked as before.
        assert http.post("/jobs", json={"kind": "find"}).status_code == 422
        too_big = http.post("/jobs", content=b"{" + b" " * BODY_LIMIT + b"}")
        assert too_big.status_code == 413
        assert str(BODY_LIMIT) in too_big.json()["detail"]


def test_a_token_past_its_rate_gets_429_with_retry_after_and_others_are_served(
    farm: Farm,
) -> None:
    farm.env["QRFARM_API_RATE_PER_S"] = "0.01"
    farm.env["QRFARM_API_RATE_BURST"] = "5"
    api = start_api(farm)
    other = api.issue("other")
    with api.http() as http, api.http(other) as http_other:
        codes = [http.get("/nodes").status_code for _ in range(5)]
        assert codes == [200] * 5
        refused = http.get("/nodes")
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert "rate" in refused.json()["detail"]
        assert http_other.get("/nodes").status_code == 200


def test_api_processes_sharing_redis_share_each_tokens_bucket(
    tmp_path: Path, qrfarm_scp_port: int
) -> None:
    with make_farm("redis-postgresql", tmp_path, qrfarm_scp_port) as shared:
        shared.env["QRFARM_API_RATE_PER_S"] = "0.01"
        shared.env["QRFARM_API_RATE_BURST"] = "4"
        first = start_api(shared)
        second = start_another_api(first)
        with first.http() as one, second.http() as two:
            codes = [c.get("/nodes").status_code for c in (one, two, one, two)]
            assert codes == [200] * 4
            for client in (one, two):
                refused = client.get("/nodes")
                assert refused.status_code == 429, refused.text
                assert int(refused.headers["Retry-After"]) >= 1


def test_anonymous_health_says_only_up_or_down_and_a_token_sees_the_checks(
    farm: Farm,
) -> None:
    api = start_api(farm)
    anonymous = httpx.get(f"{api.url}/health", trust_env=False)
    # No SCP runs here: down, and nothing said about why.
    assert anonymous.status_code == 503
    assert anonymous.json() == {"status": "degraded"}
    wrong = httpx.get(
        f"{api.url}/health", headers={"Authorization": "Bearer qrf_wrong"}, trust_env=False
    )
    assert wrong.json() == {"status": "degraded"}
    with api.http() as http:
        detailed = http.get("/health")
    assert detailed.status_code == 503
    assert set(detailed.json()["checks"]) == {"database", "broker", "scp"}
    assert detailed.json()["checks"]["database"]["ok"] is True


def test_metrics_need_a_token_or_their_own_port(farm: Farm) -> None:
    metrics_port = free_port()
    farm.env["QRFARM_API_METRICS_PORT"] = str(metrics_port)
    api = start_api(farm)
    assert httpx.get(f"{api.url}/metrics", trust_env=False).status_code == 401
    with api.http() as http:
        assert "qrfarm_jobs" in http.get("/metrics").text
    assert wait_for_port(metrics_port, timeout=10)
    own = httpx.get(f"http://{LOCALHOST}:{metrics_port}/metrics", trust_env=False)
    assert own.status_code == 200
    assert "qrfarm_received_instances_total" in own.text


def test_a_page_larger_than_the_maximum_is_refused_naming_it(farm: Farm) -> None:
    api = start_api(farm)
    with api.http() as http:
        refused = http.get("/jobs", params={"limit": 1001})
    assert refused.status_code == 422
    (error,) = refused.json()["detail"]
    assert error["loc"] == ["query", "limit"]
    assert "1000" in error["msg"]


def test_invented_tokens_share_their_address_bucket(farm: Farm) -> None:
    """A new bearer text per request does not bring a new bucket each time: tokens
    not yet seen accepted count against their address as well."""
    farm.env["QRFARM_API_RATE_PER_S"] = "0.01"
    farm.env["QRFARM_API_RATE_BURST"] = "5"
    api = start_api(farm)
    with api.http() as http:  # a real token, proven on its first answer
        assert http.get("/nodes").status_code == 200
    with httpx.Client(base_url=api.url, trust_env=False, timeout=30) as anonymous:
        codes = [
            anonymous.get("/nodes", headers={"Authorization": f"Bearer invented-{n}"}).status_code
            for n in range(8)
        ]
    # The real token's first answer took one from that bucket too.
    assert codes[:4] == [401] * 4, codes
    assert codes[4:] == [429] * 4, codes
    with api.http() as http:  # the proven token is still served
        assert http.get("/nodes").status_code == 200
