"""The compose file as docker-compose itself resolves it (anchors, and
.env.example with the secrets an operator adds to it)."""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
import tempfile
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


# What .env.example leaves for the operator to fill in: no working default.
OPERATOR_SECRETS = ("POSTGRES_PASSWORD", "QRFARM_WEBHOOK_SECRET")


def webhook_secret() -> str:
    """A Standard Webhooks secret: "whsec_" and a random key in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def operator_env(**values: str) -> str:
    """.env.example as an operator completes it: each secret given its own value."""
    chosen = {name: secrets.token_urlsafe(24) for name in OPERATOR_SECRETS}
    chosen["QRFARM_WEBHOOK_SECRET"] = webhook_secret()
    chosen.update(values)
    lines = [
        line
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.partition("=")[0].strip() not in chosen
    ]
    return "\n".join([*lines, *(f"{name}={value}" for name, value in chosen.items())]) + "\n"


def compose_config(*args: str, env_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """``docker-compose config`` with the operator's .env (by default: .env.example completed)."""
    with tempfile.NamedTemporaryFile("w", suffix=".env") as env_file:
        env_file.write(operator_env() if env_text is None else env_text)
        env_file.flush()
        return _config(env_file.name, *args)


def _config(env_file: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            docker_compose(),
            "--env-file",
            env_file,
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
