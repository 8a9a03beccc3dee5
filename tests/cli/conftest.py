"""The qrfarm command as an installed user runs it: its console script, a farm to talk to."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from qrfarm.jobs.nodes import NodeSpec
from qrfarm.sandbox.synthetic import Corpus
from tests.farm.conftest import Farm, make_farm, sandbox
from tests.peers.ports import free_port

QRFARM = Path(sys.executable).with_name("qrfarm")
"""The console script pip installed, as a user calls it (not ``python -m``)."""


def qrfarm(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(QRFARM), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "QRFARM_ALLOWED_HOSTS": "127.0.0.1", "COLUMNS": "200", **(env or {})},
        check=False,
    )


@dataclass
class CliFarm:
    farm: Farm
    pacs_port: int

    @property
    def env(self) -> dict[str, str]:
        return self.farm.env

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return qrfarm(*args, env=self.env)

    def farm_run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """The command with settings of its own on top of the farm's."""
        return qrfarm(*args, env={**self.env, **env})


@pytest.fixture(scope="module")
def cli_farm(tmp_path_factory: pytest.TempPathFactory, corpus: Corpus) -> Iterator[CliFarm]:
    """An embedded farm (SQLite, SCP, a worker, the scheduler); the sandbox PACS as ``sandbox``."""
    scp_port = free_port()
    root = tmp_path_factory.mktemp("cli-farm")
    with make_farm("embedded", root, scp_port) as farm, sandbox(corpus, scp_port) as pacs:
        port = int(pacs.port)  # type: ignore[attr-defined]
        farm.register(NodeSpec("sandbox", "SANDBOX", "127.0.0.1", port))
        farm.start_scp()
        farm.start_worker(concurrency=1)
        farm.start("scheduler", "scheduler")  # advances prefetches
        yield CliFarm(farm, port)
