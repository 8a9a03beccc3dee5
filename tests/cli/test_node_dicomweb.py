"""`qrfarm node add --dicomweb-url`: a DICOMweb node kept with its auth settings,
and a URL refused where it enters (its form, the outbound allow-list)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from qrfarm.cli import app
from tests.farm.conftest import Farm, make_farm
from tests.peers.ports import free_port


def qrfarm(*args: str, env: dict[str, str]) -> Result:
    """The command in this process (a subprocess costs seconds of imports each)."""
    return CliRunner().invoke(
        app, list(args), env={"QRFARM_ALLOWED_HOSTS": "127.0.0.1", "COLUMNS": "200", **env}
    )


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[Farm]:
    with make_farm("embedded", tmp_path, free_port()) as farm:
        yield farm


def test_node_add_keeps_a_dicomweb_node_and_refuses_a_url_it_may_not_reach(
    farm: Farm, tmp_path: Path
) -> None:
    secret = tmp_path / "password"
    secret.write_text("not-shown-anywhere\n")
    added = qrfarm(
        "node", "add", "web", "WEB@127.0.0.1:8042",
        "--dicomweb-url", "http://127.0.0.1:8042/dicom-web",
        "--dicomweb-auth", "basic", "--dicomweb-user", "qrfarm",
        "--dicomweb-secret-file", str(secret), "--retrieve-via", "dicomweb",
        env=farm.env,
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    shown = qrfarm("node", "show", "web", "--json", env=farm.env)
    node = json.loads(shown.output)
    assert node["dicomweb_url"] == "http://127.0.0.1:8042/dicom-web"
    assert (node["dicomweb_auth"], node["dicomweb_username"]) == ("basic", "qrfarm")
    assert node["dicomweb_secret_file"] == str(secret.resolve())
    assert (node["retrieve_transport"], node["delivery_transport"]) == ("dicomweb", "dimse")
    assert "not-shown-anywhere" not in shown.stdout + added.output

    for url, why in [
        ("http://127.0.0.2:8042/dicom-web", "not in the outbound allow-list"),
        ("ftp://127.0.0.1/dicom-web", "the scheme must be http or https"),
    ]:
        refused = qrfarm(
            "node", "add", "refused", "WEB@127.0.0.1:8042", "--dicomweb-url", url, env=farm.env
        )
        assert refused.exit_code != 0
        assert why in refused.output, refused.output
