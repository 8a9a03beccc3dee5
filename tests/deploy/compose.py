"""The compose file as docker-compose itself resolves it (anchors, .env.example),
and its services' commands and environment turned into loopback processes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"


def docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        message = "docker-compose (Debian's package) is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def compose_config(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            docker_compose(),
            "--env-file",
            str(ENV_EXAMPLE),
            "-f",
            str(COMPOSE_FILE),
            *args,
            "config",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=60,
    )


def resolved() -> dict[str, Any]:
    """The services as docker-compose resolves them."""
    result = compose_config()
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config
