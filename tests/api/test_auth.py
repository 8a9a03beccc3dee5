"""Every route but the probes (/health, /ready) refuses a missing, wrong or revoked
token, and touches nothing."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from qrfarm.models import ApiToken, Job, NodeRecord, Prefetch, PrefetchRule
from tests.farm.conftest import make_farm

from .conftest import ApiFarm, start_api

PATH_VALUES = {
    "job_id": "1",
    "prefetch_id": "1",
    "name": "pacs",
    "batch_id": "1",
    "retrieval_id": "1",
}
# Bodies that would be accepted with a good token: it is the token that is refused.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/jobs"): {"kind": "find", "node": "pacs", "level": "STUDY"},
    ("post", "/nodes"): {"name": "other", "ae_title": "X", "host": "127.0.0.1", "port": 104},
    ("put", "/nodes/{name}"): {"ae_title": "X", "host": "127.0.0.1", "port": 104},
    ("post", "/prefetch"): {"patient_id": "P1", "rule": {"nodes": ["pacs"]}},
    ("put", "/prefetch-rules/{name}"): {"nodes": ["pacs"]},
}


@pytest.fixture
def api(tmp_path: Path, qrfarm_scp_port: int) -> Iterator[ApiFarm]:
    with make_farm("redis-postgresql", tmp_path, qrfarm_scp_port) as farm:
        yield start_api(farm)


def operations(api: ApiFarm) -> list[tuple[str, str]]:
    schema = httpx.get(f"{api.url}/openapi.json", trust_env=False).json()
    return [
        (method, path)
        for path, methods in schema["paths"].items()
        for method in methods
        if path not in ("/health", "/ready")  # probes: no token
    ]


def counts(api: ApiFarm) -> dict[str, int]:
    with api.farm.client.sessions() as session:
        return {
            model.__name__: session.query(model).count()
            for model in (Job, NodeRecord, Prefetch, PrefetchRule, ApiToken)
        }


def test_every_route_but_health_refuses_missing_wrong_and_revoked_tokens(api: ApiFarm) -> None:
    revoked = api.issue("former-integration")
    api.revoke("former-integration")
    with api.http() as http:
        node = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}
        assert http.post("/nodes", json=node).status_code == 201
    before = counts(api)
    ops = operations(api)
    assert len(ops) >= 15  # the whole API, not a few routes
    headers_tried: dict[str, dict[str, str]] = {
        "missing": {},
        "wrong": {"Authorization": "Bearer qrf_not-a-token"},
        "revoked": {"Authorization": f"Bearer {revoked}"},
        "not bearer": {"Authorization": f"Basic {api.token}"},
    }
    with httpx.Client(base_url=api.url, trust_env=False, timeout=30) as http:
        for method, template in ops:
            path = re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m[1]], template)
            for what, headers in headers_tried.items():
                response = http.request(
                    method, path, headers=headers, json=BODIES.get((method, template))
                )
                assert response.status_code == 401, (method, path, what, response.text)
                assert response.headers["WWW-Authenticate"] == "Bearer"
    assert counts(api) == before
    # The good token still works, and health needs none.
    with api.http() as http:
        assert http.get("/nodes").status_code == 200
    assert httpx.get(f"{api.url}/health", trust_env=False).status_code in (200, 503)


def test_tokens_are_stored_hashed(api: ApiFarm) -> None:
    with api.farm.client.sessions() as session:
        stored = [row.token_hash for row in session.query(ApiToken)]
    assert api.token not in stored
    assert all(re.fullmatch(r"[0-9a-f]{64}", value) for value in stored)
