"""The API's audit trail, read back through GET /audit: who read a find job's
answers (and for which patient), who changed a node, who was refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.farm.conftest import make_farm

from .conftest import ApiFarm, start_api


@pytest.fixture(params=["redis-postgresql", "embedded"])
def api(request: pytest.FixtureRequest, tmp_path: Path, qrfarm_scp_port: int) -> Iterator[ApiFarm]:
    """On PostgreSQL, and on SQLite, where every transaction takes the write lock:
    the row written after the answer must not wait for the route's own."""
    with make_farm(request.param, tmp_path, qrfarm_scp_port) as farm:
        yield start_api(farm)


def trail(api: ApiFarm, **filters: Any) -> list[dict[str, Any]]:
    with api.http() as http:
        response = http.get("/audit", params=filters)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def test_reading_a_find_jobs_answers_is_recorded_with_token_patient_and_address(
    api: ApiFarm,
) -> None:
    reader = api.issue("reading-station", ("read",))
    with api.http() as http:
        node = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}
        assert http.post("/nodes", json=node).status_code == 201
        job = {"kind": "find", "node": "pacs", "level": "STUDY", "keys": {"PatientID": "AUD-1"}}
        created = http.post("/jobs", json=job)
        assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    with api.http(reader) as http:
        assert http.get(f"/jobs/{job_id}/results").status_code == 200
        assert http.get("/audit").status_code == 403  # admin only

    [row] = trail(api, action="job.results.read")
    assert row["actor_kind"] == "token" and row["actor"] == "reading-station"
    assert row["job_id"] == job_id and row["node"] == "pacs"
    assert row["patient_key"] == "AUD-1"
    assert row["source"] == "127.0.0.1"
    assert row["outcome"] == "success" and row["action_code"] == "R"
    # The submission is there too, and filters combine.
    [submitted] = trail(api, action="job.submit", patient_key="AUD-1")
    assert submitted["actor"] == "tests" and submitted["job_id"] == job_id
    assert trail(api, action="job.", actor="nobody") == []
    refused = trail(api, outcome="refused")
    assert [(r["action"], r["actor"]) for r in refused] == [("audit.read", "reading-station")]


def test_a_node_change_is_recorded_and_a_refused_one_too(api: ApiFarm) -> None:
    submitter = api.issue("ris", ("read", "submit"))
    node = {"ae_title": "PACS", "host": "127.0.0.1", "port": 104}
    with api.http() as http:
        assert http.put("/nodes/pacs", json=node).status_code == 404
        assert http.post("/nodes", json={"name": "pacs", **node}).status_code == 201
        assert http.put("/nodes/pacs", json={**node, "port": 11112}).status_code == 200
    with api.http(submitter) as http:
        assert http.put("/nodes/pacs", json={**node, "port": 1}).status_code == 403

    rows = trail(api, node="pacs", action="node.")
    assert [(r["action"], r["actor"], r["outcome"]) for r in rows] == [
        ("node.change", "ris", "refused"),
        ("node.change", "tests", "success"),
        ("node.add", "tests", "success"),
        ("node.change", "tests", "failed"),
    ]
    assert {r["action_code"] for r in rows} == {"C", "U"}
    assert all(r["patient_key"] is None for r in rows)
