"""`qrfarm serve`: its children, wherever it is started, and a child that cannot start."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from qrfarm.sandbox.synthetic import Corpus
from tests.conftest import QRFARM_SCP_AE
from tests.farm.conftest import sandbox
from tests.peers.ports import free_port

from .conftest import QRFARM, qrfarm

UP_WITHIN_S = 120.0


def _serve_env(root: Path, scp_port: int, api_port: int) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("QRFARM_BROKER_URL", "QRFARM_DATABASE_URL")
    }
    env.update(
        QRFARM_DATABASE_URL=f"sqlite:///{root / 'qrfarm.db'}",
        QRFARM_STORAGE_ROOT=str(root / "storage"),
        QRFARM_DATA_DIR=str(root / "data"),
        QRFARM_SCP_PORT=str(scp_port),
        QRFARM_SCP_AE_TITLE=QRFARM_SCP_AE,
        QRFARM_API_HOST="127.0.0.1",
        QRFARM_API_PORT=str(api_port),
        QRFARM_ALLOWED_HOSTS="127.0.0.1",
        QRFARM_RECONCILE_GRACE_S="1",
        QRFARM_SCHEDULER_INTERVAL_S="0.5",
        QRFARM_CONFIG=str(root / "none.toml"),
        COLUMNS="200",
    )
    return env


@contextmanager
def serving(cwd: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(QRFARM), "serve", "--workers", "1"],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def _decoy_folder(tmp_path: Path) -> Path:
    """A folder holding a ``qrfarm/`` that is not the package (the parent of a checkout)."""
    folder = tmp_path / "work"
    (folder / "qrfarm").mkdir(parents=True)
    (folder / "qrfarm" / "__init__.py").write_text('"""Not the qrfarm package."""\n')
    return folder


def test_serve_from_a_folder_holding_a_decoy_qrfarm_runs_every_child(
    tmp_path: Path, corpus: Corpus
) -> None:
    decoy = _decoy_folder(tmp_path)
    scp_port, api_port = free_port(), free_port()
    env = _serve_env(tmp_path, scp_port, api_port)
    log = tmp_path / "serve.log"
    with serving(decoy, env, log) as process, sandbox(corpus, scp_port) as pacs:
        deadline = time.monotonic() + UP_WITHIN_S
        health: httpx.Response | None = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{api_port}/health", timeout=5)
                if health.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert health is not None, log.read_text(errors="replace")[-4000:]
        assert health.status_code == 200, (health.text, log.read_text(errors="replace")[-4000:])
        # The scheduler and a worker are up too: a queued find is run to its end.
        added = qrfarm("node", "add", "sandbox", f"SANDBOX@127.0.0.1:{pacs.port}", env=env)  # type: ignore[attr-defined]
        assert added.returncode == 0, added.stderr
        assert qrfarm("probe", "scheduler", cwd=decoy, env=env).returncode == 0
        found = qrfarm(
            "find", "sandbox", "-k", "PatientID=P001", "--wait", "--json", cwd=decoy, env=env
        )
        assert found.returncode == 0, found.stderr + log.read_text(errors="replace")[-4000:]
        assert json.loads(found.stdout), found.stdout
    assert "cannot import" not in log.read_text(errors="replace")


def test_a_child_failing_at_start_three_times_stops_serve_with_its_error(tmp_path: Path) -> None:
    scp_port, api_port = free_port(), free_port()
    env = _serve_env(tmp_path, scp_port, api_port)
    log = tmp_path / "serve.log"
    with socket.socket() as taken:  # the API's port, held: its child cannot bind
        taken.bind(("127.0.0.1", api_port))
        taken.listen(1)
        with serving(tmp_path, env, log) as process:
            try:
                code = process.wait(UP_WITHIN_S)
            except subprocess.TimeoutExpired:
                pytest.fail("serve kept restarting a child that cannot start:\n" + log.read_text())
    text = log.read_text(errors="replace")
    assert code != 0, text
    assert "REST API" in text and "3 times" in text, text
    assert "address already in use" in text.lower(), text


def test_serve_names_the_broker_by_its_address_never_its_password(tmp_path: Path) -> None:
    scp_port, api_port = free_port(), free_port()
    env = _serve_env(tmp_path, scp_port, api_port)
    env["QRFARM_BROKER_URL"] = f"redis://:broker-s3cret@127.0.0.1:{free_port()}/0"
    log = tmp_path / "serve.log"
    with serving(tmp_path, env, log) as process:
        deadline = time.monotonic() + UP_WITHIN_S
        while "qrfarm serving" not in log.read_text(errors="replace"):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    text = log.read_text(errors="replace")
    assert "broker 127.0.0.1:" in text, text
    assert "broker-s3cret" not in text, text
