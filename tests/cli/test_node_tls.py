"""`qrfarm node add --tls`: the node's TLS files kept with it, and nothing half-given."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.farm.conftest import Farm, make_farm
from tests.peers.certs import TestCa
from tests.peers.ports import free_port

from .conftest import qrfarm


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[Farm]:
    with make_farm("embedded", tmp_path, free_port()) as farm:
        yield farm


def test_node_add_keeps_the_tls_files_and_refuses_them_without_tls(
    farm: Farm, tmp_path: Path
) -> None:
    ca = TestCa(tmp_path / "tls")
    ours = ca.issue("qrfarm")
    added = qrfarm(
        "node", "add", "pacs", "PACS@127.0.0.1:2762", "--tls",
        "--tls-ca", str(ca.cert_file), "--tls-cert", str(ours.cert), "--tls-key", str(ours.key),
        env=farm.env,
    )  # fmt: skip
    assert added.returncode == 0, added.stdout + added.stderr
    shown = qrfarm("node", "show", "pacs", "--json", env=farm.env)
    node = json.loads(shown.stdout)
    assert node["tls"] is True
    assert node["tls_ca_file"] == str(ca.cert_file.resolve())
    assert (node["tls_cert_file"], node["tls_key_file"]) == (
        str(ours.cert.resolve()),
        str(ours.key.resolve()),
    )

    refused = qrfarm(
        "node", "add", "plain", "PACS@127.0.0.1:104", "--tls-ca", str(ca.cert_file), env=farm.env
    )
    assert refused.returncode == 4
    assert "TLS is off" in refused.stdout + refused.stderr
