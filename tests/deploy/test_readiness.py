"""The API pods become Ready: the path of the Kubernetes readiness probe, asked
of a real `qrfarm api` process with no storage SCP on its loopback (as in an
API pod), answers 200; and 503 while the database cannot be reached. The
worker autoscaler's query names metrics this API really exports."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import ApiFarm, start_api
from tests.farm.conftest import make_farm
from tests.peers.ports import free_port
from tests.postgres_cluster import run_own_postgres

from .kustomize import KUBERNETES, Doc, render


@pytest.fixture
def api_alone(tmp_path: Path, qrfarm_scp_port: int) -> Iterator[ApiFarm]:
    """Redis, PostgreSQL and the API (its metrics on their own port, as the
    Deployment has it); no SCP, no worker."""
    with make_farm("redis-postgresql", tmp_path, qrfarm_scp_port) as farm:
        farm.env["QRFARM_API_METRICS_PORT"] = str(free_port())
        farm.env["QRFARM_METRICS_HOST"] = "127.0.0.1"
        yield start_api(farm)


def api_deployment() -> Doc:
    [api] = [
        d
        for d in render(KUBERNETES / "base")
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "qrfarm-api"
    ]
    return api


def readiness_path() -> str:
    [container] = api_deployment()["spec"]["template"]["spec"]["containers"]
    probe = container["readinessProbe"]["httpGet"]
    assert probe["port"] == "http"
    return str(probe["path"])


def nothing_listens(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_the_api_is_ready_with_no_scp_on_its_loopback(api_alone: ApiFarm) -> None:
    farm = api_alone.farm
    assert nothing_listens(int(farm.env["QRFARM_SCP_PORT"]))
    path = readiness_path()
    with httpx.Client(base_url=api_alone.url, trust_env=False, timeout=30) as anonymous:
        response = anonymous.get(path)
    assert response.status_code == 200, response.text
    # The image's health check (`qrfarm probe`, the API's role) agrees.
    probe = subprocess.run(
        [sys.executable, "-m", "qrfarm.cli", "probe", "api"],
        env={**os.environ, **farm.env, "QRFARM_API_PORT": str(api_alone.port)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.returncode == 0, probe.stdout + probe.stderr


def test_the_api_is_not_ready_while_its_database_is_out_of_reach(
    tmp_path: Path, qrfarm_scp_port: int
) -> None:
    # Its own PostgreSQL, stopped and started again; never the machine's.
    with (
        run_own_postgres(tmp_path / "postgres") as database,
        make_farm(
            "redis-postgresql", tmp_path / "farm", qrfarm_scp_port, None, database.url
        ) as farm,
    ):
        api = start_api(farm)
        with httpx.Client(base_url=api.url, trust_env=False, timeout=30) as anonymous:
            assert anonymous.get(readiness_path()).status_code == 200
            database.stop()
            response = anonymous.get(readiness_path())
            assert response.status_code == 503, response.text
            database.start()
            assert anonymous.get(readiness_path()).status_code == 200


def test_the_worker_autoscaler_reads_metrics_the_api_exports(api_alone: ApiFarm) -> None:
    [scaled] = [d for d in render(KUBERNETES / "base") if d["kind"] == "ScaledObject"]
    names = set(re.findall(r"qrfarm_[a-z_]+", scaled["spec"]["triggers"][0]["metadata"]["query"]))
    assert names >= {"qrfarm_queue_depth"}
    with api_alone.http() as http:
        node = {"name": "pacs7", "ae_title": "PACS7", "host": "127.0.0.1", "port": 104}
        assert http.post("/nodes", json=node).status_code == 201
    # Read as Prometheus reads it: the API's metrics port, no token.
    metrics_url = f"http://127.0.0.1:{api_alone.farm.env['QRFARM_API_METRICS_PORT']}/metrics"
    exported = httpx.get(metrics_url, trust_env=False, timeout=30).text
    for name in names:
        assert f"# TYPE {name} " in exported, name
    # Every node's queue is counted, this one's as well.
    assert 'qrfarm_queue_depth{queue="qrfarm.node.pacs7"}' in exported
