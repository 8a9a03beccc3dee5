"""The compose topology run as plain processes, with the compose file's commands
and environment (only addresses and paths moved to loopback and a scratch
folder): two storage SCPs behind HAProxy (Debian's), three workers, the
scheduler and the API, on the machine's Redis and PostgreSQL. Orthanc moves
studies to the one address; every instance is recorded once; an SCP killed
during a move leaves the rest to the other, and the job still reconciles."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from qrfarm.models import ReceivedInstance
from qrfarm.sandbox.synthetic import Corpus
from tests.api.conftest import ApiFarm, start_api
from tests.api.test_routes import wait_ended
from tests.farm.conftest import Farm, make_farm
from tests.observability.test_metrics_and_logs import scrape
from tests.peers import require_peer
from tests.peers.orthanc import OrthancPeer
from tests.peers.ports import free_port, wait_for_port

from .compose import HAPROXY_CFG, resolved

HAPROXY = "/usr/sbin/haproxy"


@dataclass
class Topology:
    farm: Farm
    api: ApiFarm
    scps: dict[str, tuple[subprocess.Popen[bytes], int]]  # name -> process, metrics port


def on_loopback(environment: dict[str, Any], farm: Farm, **extra: str) -> dict[str, str]:
    """A service's compose environment, its addresses and paths moved here."""
    env = {key: str(value) for key, value in environment.items()}
    for key in (
        "QRFARM_DATABASE_URL",
        "QRFARM_BROKER_URL",
        "QRFARM_STORAGE_ROOT",
        "QRFARM_DATA_DIR",
        "QRFARM_ALLOWED_HOSTS",
        "QRFARM_SCP_PORT",
        "QRFARM_RECONCILE_GRACE_S",
        "QRFARM_SCHEDULER_INTERVAL_S",
        "QRFARM_BACKOFF_BASE_S",
        "QRFARM_BACKOFF_CAP_S",
    ):
        env[key] = farm.env[key]
    env.update(
        QRFARM_NODES="",  # the PACS is registered through the API
        QRFARM_SCP_AE_TITLE=farm.env["QRFARM_SCP_AE_TITLE"],
        QRFARM_METRICS_HOST="127.0.0.1",
        QRFARM_METRICS_PORT=str(free_port()),
        **extra,
    )
    # HAProxy (the PROXY protocol's only sender) connects from loopback here.
    for key in (
        "QRFARM_SCP_HOST",
        "QRFARM_API_HOST",
        "QRFARM_HL7_HOST",
        "QRFARM_SCP_PROXY_PROTOCOL_FROM",
    ):
        if key in env:
            env[key] = "127.0.0.1"
    return env


@pytest.fixture
def topology(tmp_path: Path, qrfarm_scp_port: int) -> Iterator[Topology]:
    require_peer(HAPROXY)
    services = resolved()["services"]
    with make_farm("redis-postgresql", tmp_path, qrfarm_scp_port) as farm:
        scps = {}
        for name in ("scp1", "scp2"):
            port = free_port()
            env = on_loopback(services[name]["environment"], farm, QRFARM_SCP_PORT=str(port))
            process = farm.start(name, *services[name]["command"], env=env)
            assert wait_for_port(port, still_running=lambda p=process: p.poll() is None), (
                farm.logs()
            )
            scps[name] = (process, int(env["QRFARM_METRICS_PORT"]), port)
        proxy_env = {
            **services["haproxy"]["environment"],
            "QRFARM_DICOM_BIND": f"127.0.0.1:{qrfarm_scp_port}",
            "QRFARM_SCP1_ADDR": f"127.0.0.1:{scps['scp1'][2]}",
            "QRFARM_SCP2_ADDR": f"127.0.0.1:{scps['scp2'][2]}",
        }
        log = (tmp_path / "haproxy.log").open("wb")
        haproxy = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(HAPROXY_CFG)],
            env={**os.environ, **proxy_env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            assert wait_for_port(qrfarm_scp_port, still_running=lambda: haproxy.poll() is None)
            for n in range(3):
                farm.start(
                    f"worker{n}",
                    *services["worker"]["command"],
                    env=on_loopback(services["worker"]["environment"], farm),
                )
            farm.start(
                "scheduler",
                *services["scheduler"]["command"],
                env=on_loopback(services["scheduler"]["environment"], farm),
            )
            farm.env.update(on_loopback(services["api"]["environment"], farm))
            api = start_api(farm)
            yield Topology(farm, api, {k: (v[0], v[1]) for k, v in scps.items()})
        finally:
            haproxy.terminate()
            haproxy.wait(10)
            log.close()


def register(topology: Topology, orthanc: OrthancPeer) -> None:
    with topology.api.http() as http:
        node = {
            "name": "orthanc",
            "ae_title": orthanc.ae_title,
            "host": "127.0.0.1",
            "port": orthanc.port,
        }
        assert http.post("/nodes", json=node).status_code == 201


def rows_per_instance(farm: Farm, job_id: int) -> dict[str, int]:
    with farm.client.sessions() as session:
        rows = session.execute(
            select(ReceivedInstance.sop_instance_uid, func.count())
            .where(ReceivedInstance.job_id == job_id)
            .group_by(ReceivedInstance.sop_instance_uid)
        )
        return {uid: count for uid, count in rows}


def move(topology: Topology, study: str) -> int:
    with topology.api.http() as http:
        response = http.post(
            "/jobs",
            json={
                "kind": "move",
                "node": "orthanc",
                "level": "STUDY",
                "keys": {"StudyInstanceUID": study},
            },
        )
        assert response.status_code == 201, response.text
        return int(response.json()["id"])


def test_studies_moved_to_the_one_address_are_each_recorded_once(
    topology: Topology, orthanc: OrthancPeer, corpus: Corpus
) -> None:
    register(topology, orthanc)
    jobs = {move(topology, study): study for study in corpus.studies()}
    with topology.api.http() as http:
        for job_id, study in jobs.items():
            job = wait_ended(http, job_id, timeout=240)
            assert job["state"] == "completed", job
            expected = {i.sop_uid for i in corpus.studies()[study]}
            assert rows_per_instance(topology.farm, job_id) == dict.fromkeys(expected, 1)
    stored = {
        name: scrape(port).get('qrfarm_scp_stores_total{outcome="stored"}', 0.0)
        for name, (_, port) in topology.scps.items()
    }
    assert sum(stored.values()) == len(corpus.instances)


def test_an_scp_killed_during_a_move_leaves_the_rest_to_the_other(
    topology: Topology, orthanc: OrthancPeer, corpus: Corpus
) -> None:
    register(topology, orthanc)
    farm = topology.farm
    study = corpus.large_study_uid
    expected = {i.sop_uid for i in corpus.studies()[study]}
    job_id = move(topology, study)
    deadline = time.monotonic() + 60
    receiving = None
    while receiving is None and time.monotonic() < deadline:
        for name, (_, port) in topology.scps.items():
            if scrape(port).get('qrfarm_scp_stores_total{outcome="stored"}', 0.0) >= 30:
                receiving = name
        time.sleep(0.02)
    assert receiving is not None, farm.logs()
    process, _ = topology.scps[receiving]
    farm.kill(process)  # the SCP receiving the move, SIGKILL, mid-association
    with topology.api.http() as http:
        job = wait_ended(http, job_id, timeout=240)
    assert job["state"] == "completed", (job, farm.logs())
    assert rows_per_instance(farm, job_id) == dict.fromkeys(expected, 1)
    assert job["recorded"] == len(expected)
    # The rest came through the other SCP, asked for again by UID.
    assert job["attempt_count"] >= 2
    [other] = [name for name in topology.scps if name != receiving]
    assert scrape(topology.scps[other][1])['qrfarm_scp_stores_total{outcome="stored"}'] > 0
    with topology.api.http() as http:  # the checks are shown to a token
        assert http.get("/health").json()["checks"]["database"]["ok"]
