"""DICOMweb nodes through the REST API: kept with their auth settings; a URL
the allow-list refuses, and a secret file outside the secrets folder (a
remote admin must not have a worker send any file as a password), refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from qrfarm.api import tokens
from qrfarm.api.app import create_app
from qrfarm.client import Client
from qrfarm.config import Settings
from qrfarm.models import upgrade


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, Path]]:
    """The API in this process (a served API costs many seconds to start)."""
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'qrfarm.db'}",
        data_dir=tmp_path / "data",
        storage_root=tmp_path / "storage",
        allowed_hosts=["127.0.0.1"],
    )
    upgrade(settings.database_url)
    client = Client.from_settings(settings)
    app = create_app(settings, engine=client.engine, dispatcher=client.dispatcher)
    with client.sessions() as db, db.begin():
        token = tokens.issue(db, "dicomweb-test", tokens.ALL_SCOPES)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        yield TestClient(app, base_url="http://127.0.0.1", headers=headers), settings.data_dir
    finally:
        client.close()


def test_a_dicomweb_node_through_the_api(api: tuple[TestClient, Path], tmp_path: Path) -> None:
    http, data_dir = api
    secrets = data_dir / "secrets"
    secrets.mkdir(parents=True)
    (secrets / "pacs-token").write_text("token-never-shown\n")
    outside = tmp_path / "elsewhere-token"
    outside.write_text("a-file-no-one-meant-to-send\n")
    node = {
        "name": "web",
        "ae_title": "WEB",
        "host": "127.0.0.1",
        "port": 8042,
        "dicomweb_url": "http://127.0.0.1:8042/dicom-web",
        "dicomweb_auth": "bearer",
        "retrieve_transport": "dicomweb",
    }
    refused = http.post("/nodes", json={**node, "dicomweb_secret_file": str(outside)})
    assert 400 <= refused.status_code < 500
    assert "must lie in" in refused.text
    elsewhere = http.post(
        "/nodes",
        json={
            **node,
            "dicomweb_url": "http://127.0.0.2:8042/dicom-web",
            "dicomweb_secret_file": str(secrets / "pacs-token"),
        },
    )
    assert 400 <= elsewhere.status_code < 500
    assert "not in the outbound allow-list" in elsewhere.text
    created = http.post(
        "/nodes", json={**node, "dicomweb_secret_file": str(secrets / "pacs-token")}
    )
    assert created.status_code == 201, created.text
    shown = http.get("/nodes/web").json()
    assert shown["dicomweb_url"] == node["dicomweb_url"]
    assert shown["dicomweb_secret_file"] == str((secrets / "pacs-token").resolve())
    assert shown["retrieve_transport"] == "dicomweb"
    assert "token-never-shown" not in created.text + str(shown)
