"""`qrfarm api` over HTTPS (QRFARM_API_TLS_CERT_FILE, QRFARM_API_TLS_KEY_FILE)."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.farm.conftest import Farm, make_farm
from tests.peers.certs import TestCa
from tests.peers.ports import free_port, wait_for_port


@pytest.fixture
def farm(tmp_path: Path, qrfarm_scp_port: int) -> Iterator[Farm]:
    with make_farm("embedded", tmp_path, qrfarm_scp_port) as farm:
        yield farm


def test_the_api_serves_https_and_nothing_in_the_clear(farm: Farm, tmp_path: Path) -> None:
    ca = TestCa(tmp_path / "tls")
    server = ca.issue("api")
    port = free_port()
    farm.env.update(
        {
            "QRFARM_API_PORT": str(port),
            "QRFARM_API_TLS_CERT_FILE": str(server.cert),
            "QRFARM_API_TLS_KEY_FILE": str(server.key),
        }
    )
    process = farm.start("api", "api")
    if not wait_for_port(port, timeout=30, still_running=lambda: process.poll() is None):
        pytest.fail("qrfarm api did not start:\n" + farm.logs())
    trusted = ssl.create_default_context(cafile=str(ca.cert_file))
    answer = httpx.get(
        f"https://127.0.0.1:{port}/openapi.json", verify=trusted, timeout=30, trust_env=False
    )
    assert answer.status_code == 200
    # The same port answers nothing to plain HTTP.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=10, trust_env=False)


def test_half_a_tls_configuration_stops_the_api_before_it_listens(
    farm: Farm, tmp_path: Path
) -> None:
    server = TestCa(tmp_path / "tls").issue("api")
    port = free_port()
    started = subprocess.run(
        [sys.executable, "-m", "qrfarm.cli", "api"],
        env={
            **os.environ,
            **farm.env,
            "QRFARM_API_PORT": str(port),
            "QRFARM_API_TLS_CERT_FILE": str(server.cert),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert started.returncode == 4, started.stdout + started.stderr
    assert "QRFARM_API_TLS_KEY_FILE" in started.stdout + started.stderr
