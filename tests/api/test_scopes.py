"""Every route declares the scope it needs; a token without it gets 403 naming the
scope and changes nothing, a token with it gets past the check. The OpenAPI
document of the running API drives the test, so a new route is covered at once."""

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

PUBLIC = {"/health", "/ready"}  # probes: up or not, nothing else
SCOPES = ("read", "submit", "admin")
PATH_VALUES = {
    "job_id": "1",
    "prefetch_id": "1",
    "name": "pacs",
    "batch_id": "1",
    "retrieval_id": "1",
}
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/jobs"): {"kind": "find", "node": "pacs", "level": "STUDY"},
    ("post", "/nodes"): {"name": "other", "ae_title": "X", "host": "127.0.0.1", "port": 104},
    ("put", "/nodes/{name}"): {"ae_title": "X", "host": "127.0.0.1", "port": 104},
    ("post", "/prefetch"): {"patient_id": "P1", "rule": {"nodes": ["pacs"]}},
    ("put", "/prefetch-rules/{name}"): {"nodes": ["pacs"]},
    ("post", "/jobs/{job_id}/forward"): {"destination": "pacs"},
    ("put", "/nodes/{name}/forwarding"): {"pseudonymise": True},
}
# Where the issue says each kind of route belongs.
EXPECTED = {
    ("get", "/jobs"): "read",
    ("get", "/jobs/{job_id}/results"): "read",
    ("get", "/jobs/{job_id}/instances"): "read",
    ("post", "/jobs"): "submit",
    ("delete", "/jobs/{job_id}"): "submit",
    ("post", "/jobs/{job_id}/retry"): "submit",
    ("post", "/prefetch"): "submit",
    ("get", "/prefetch/{prefetch_id}"): "read",
    ("get", "/nodes"): "read",
    ("post", "/nodes"): "admin",
    ("put", "/nodes/{name}"): "admin",
    ("delete", "/nodes/{name}"): "admin",
    ("put", "/prefetch-rules/{name}"): "admin",
    ("get", "/audit"): "admin",
    ("post", "/batches"): "submit",
    ("get", "/batches/{batch_id}"): "read",
    ("get", "/batches/{batch_id}/results.csv"): "read",
    ("post", "/jobs/actions/cancel"): "submit",
    ("post", "/jobs/actions/retry"): "submit",
    ("post", "/jobs/actions/prioritise"): "submit",
    ("post", "/jobs/{job_id}/forward"): "submit",
    ("get", "/nodes/{name}/forwarding"): "read",
    ("put", "/nodes/{name}/forwarding"): "admin",
    ("get", "/nodes/{name}/pseudonyms"): "admin",
}


@pytest.fixture
def api(tmp_path: Path, qrfarm_scp_port: int) -> Iterator[ApiFarm]:
    with make_farm("redis-postgresql", tmp_path, qrfarm_scp_port) as farm:
        yield start_api(farm)


def declared(api: ApiFarm) -> dict[tuple[str, str], str | None]:
    schema = httpx.get(f"{api.url}/openapi.json", trust_env=False).json()
    return {
        (method, path): operation.get("x-scope")
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
        if path not in PUBLIC
    }


def counts(api: ApiFarm) -> dict[str, int]:
    with api.farm.client.sessions() as session:
        return {
            model.__name__: session.query(model).count()
            for model in (Job, NodeRecord, Prefetch, PrefetchRule, ApiToken)
        }


def call(http: httpx.Client, method: str, template: str) -> httpx.Response:
    path = re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m[1]], template)
    return http.request(method, path, json=BODIES.get((method, template)))


def test_every_route_declares_a_scope_and_refuses_tokens_without_it(api: ApiFarm) -> None:
    ops = declared(api)
    assert len(ops) >= 17
    undeclared = sorted(op for op, scope in ops.items() if scope not in SCOPES)
    assert undeclared == []
    assert {op: ops.get(op) for op in EXPECTED} == EXPECTED
    tokens = {scope: api.issue(f"only-{scope}", (scope,)) for scope in SCOPES}
    with api.http() as http:
        node = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}
        assert http.post("/nodes", json=node).status_code == 201
    before = counts(api)
    for (method, template), needed in ops.items():
        for scope, token in tokens.items():
            if scope == needed:
                continue
            with api.http(token) as http:
                response = call(http, method, template)
            assert response.status_code == 403, (method, template, scope, response.text)
            assert needed in response.json()["detail"], (method, template, response.text)
            assert f'scope="{needed}"' in response.headers["WWW-Authenticate"]
    assert counts(api) == before
    # The token holding the scope gets past the check (404, 409 or 422 may follow).
    for (method, template), needed in sorted(ops.items(), key=lambda o: o[0][0] == "delete"):
        assert needed is not None
        with api.http(tokens[needed]) as http:
            response = call(http, method, template)
        assert response.status_code not in (401, 403), (method, template, response.text)
