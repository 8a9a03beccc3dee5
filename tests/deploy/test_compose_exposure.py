"""The compose farm as shipped: no secret that works by default, and nothing
on the network but the DICOM address and the API (Flower not at all)."""

from __future__ import annotations

from typing import Any

import yaml

from .compose import COMPOSE_FILE, ENV_EXAMPLE, OPERATOR_SECRETS, ROOT, compose_config, operator_env

# What the farm is for: the PACS reach the DICOM address, workflow engines the API.
ON_THE_NETWORK = {("haproxy", 11113), ("api", 8080)}
FLOWER_OVERRIDE = ROOT / "deploy" / "compose.flower.yml"


def published(services: dict[str, Any]) -> dict[tuple[str, int], str]:
    """(service, container port) -> the host address it is published on (all
    of them, 0.0.0.0, when none is named)."""
    found = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                host, target = port.get("host_ip", "0.0.0.0"), port["target"]  # noqa: S104
            else:  # docker-compose 1.x keeps "[HOST:]PUBLISHED:TARGET[/PROTO]" as text
                parts = port.split("/")[0].split(":")
                host = parts[0] if len(parts) == 3 else "0.0.0.0"  # noqa: S104
                target = parts[-1]
            found[(name, int(target))] = host
    return found


def test_no_secret_ships_with_the_compose_farm() -> None:
    for path in (COMPOSE_FILE, ENV_EXAMPLE):
        assert "change-me" not in path.read_text().lower(), path
    # .env.example as it is: docker-compose refuses it, naming what to set.
    as_shipped = compose_config(env_text=ENV_EXAMPLE.read_text())
    assert as_shipped.returncode != 0
    assert "POSTGRES_PASSWORD" in as_shipped.stderr
    for secret in OPERATOR_SECRETS:
        others = {name: "x" * 24 for name in OPERATOR_SECRETS if name != secret}
        text = operator_env(**others, **{secret: ""})
        missing = compose_config(env_text=text)
        assert missing.returncode != 0 and secret in missing.stderr, (secret, missing.stderr)
    assert compose_config().returncode == 0  # each given its value, it builds


def test_only_dicom_and_the_api_are_published_beyond_loopback() -> None:
    for args in ((), ("--profile", "demo")):
        result = compose_config(*args)
        assert result.returncode == 0, result.stderr
        services = yaml.safe_load(result.stdout)["services"]
        ports = published(services)
        assert set(ports) >= ON_THE_NETWORK | {("hl7", 2575)}, ports
        for (service, port), host in ports.items():
            if (service, port) in ON_THE_NETWORK:
                continue
            assert host == "127.0.0.1", (service, port, host)
        assert "ports" not in services["flower"]
        for datastore in ("redis", "postgres"):
            assert "ports" not in services[datastore]


def test_flower_is_published_only_on_loopback_and_with_a_password() -> None:
    override = ("-f", str(FLOWER_OVERRIDE))
    refused = compose_config(*override, env_text=operator_env())
    assert refused.returncode != 0 and "FLOWER_BASIC_AUTH" in refused.stderr
    result = compose_config(*override, env_text=operator_env(FLOWER_BASIC_AUTH="ops:s3cr3t-pass"))
    assert result.returncode == 0, result.stderr
    flower = yaml.safe_load(result.stdout)["services"]["flower"]
    assert published({"flower": flower}) == {("flower", 5555): "127.0.0.1"}
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == "ops:s3cr3t-pass"
