"""Each route of the REST API against a real farm: `qrfarm api`, worker, scheduler
and storage SCP processes on Redis and PostgreSQL, with Orthanc as the PACS."""

from __future__ import annotations

import time
from typing import Any

import httpx

from qrfarm.sandbox.synthetic import Corpus
from tests.peers.orthanc import OrthancPeer
from tests.peers.ports import free_port

from .conftest import ApiFarm

ENDED = {"completed", "partial", "failed", "cancelled"}


def wait_ended(http: httpx.Client, job_id: int, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = http.get(f"/jobs/{job_id}").json()
        if job["state"] in ENDED:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end: {job}")


def pages(http: httpx.Client, path: str, limit: int) -> list[Any]:
    items: list[Any] = []
    while True:
        page = http.get(path, params={"limit": limit, "offset": len(items)}).json()
        items += page["items"]
        if len(items) >= page["total"] or not page["items"]:
            return items


def test_nodes_jobs_results_instances_health_and_metrics(
    api_farm: ApiFarm, orthanc: OrthancPeer, corpus: Corpus
) -> None:
    farm = api_farm.farm
    farm.start_scp()
    farm.start("scheduler", "scheduler")
    farm.start_worker("orthanc")
    http = api_farm.http()

    # Nodes: add, list, read, change, echo.
    node = {"ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.port}
    created = http.post("/nodes", json={"name": "orthanc", **node})
    assert created.status_code == 201, created.text
    assert http.post("/nodes", json={"name": "orthanc", **node}).status_code == 409
    assert [n["name"] for n in http.get("/nodes").json()] == ["orthanc"]
    changed = http.put("/nodes/orthanc", json={**node, "max_associations": 3})
    assert changed.json()["max_associations"] == 3
    assert http.get("/nodes/orthanc").json()["max_associations"] == 3
    echo = http.post("/nodes/orthanc/echo").json()
    assert echo["ok"] is True and echo["status"] == "0x0000"

    # A move by named keys: completed, reported = recorded = what Orthanc holds.
    study = corpus.large_study_uid
    expected = {i.sop_uid for i in corpus.studies()[study]}
    response = http.post(
        "/jobs",
        json={
            "kind": "move",
            "node": "orthanc",
            "level": "STUDY",
            "keys": {"StudyInstanceUID": study},
        },
    )
    assert response.status_code == 201, response.text
    assert response.headers["Location"] == f"/jobs/{response.json()['id']}"
    move = wait_ended(http, response.json()["id"])
    assert move["state"] == "completed", move
    assert move["recorded"] == move["reported"]["completed"] == len(expected)
    assert move["attempts"][-1]["responses"][-1]["status"] == "0x0000"
    instances = pages(http, f"/jobs/{move['id']}/instances", limit=70)
    assert {i["sop_instance_uid"] for i in instances} == expected
    assert len(instances) == len(expected)
    assert http.get(f"/jobs/{move['id']}/results").status_code == 409

    # A find by DICOM JSON: answers stored, read back in pages.
    response = http.post(
        "/jobs",
        json={
            "kind": "find",
            "node": "orthanc",
            "level": "STUDY",
            "identifier": {"00100020": {"vr": "LO", "Value": ["P00*"]}, "00080020": {"vr": "DA"}},
        },
    )
    assert response.status_code == 201, response.text
    find = wait_ended(http, response.json()["id"])
    assert find["state"] == "completed", find
    answers = pages(http, f"/jobs/{find['id']}/results", limit=2)
    assert {a["0020000D"]["Value"][0] for a in answers} == set(corpus.studies())
    assert all("00080020" in a for a in answers)

    # The same Idempotency-Key: the same job, nothing new queued.
    body = {"kind": "find", "node": "orthanc", "level": "STUDY", "keys": {"PatientID": "P001"}}
    first = http.post("/jobs", json=body, headers={"Idempotency-Key": "ris-order-17"})
    again = http.post("/jobs", json=body, headers={"Idempotency-Key": "ris-order-17"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    # The key is not a key to the job: another request under it is refused,
    # and an HL7 order's reference cannot be taken or read back.
    other = {**body, "keys": {"PatientID": "P002"}}
    taken = http.post("/jobs", json=other, headers={"Idempotency-Key": "ris-order-17"})
    assert taken.status_code == 409 and "another request" in taken.text, taken.text
    hl7 = http.post("/jobs", json=body, headers={"Idempotency-Key": "hl7:RIS:MSG1001"})
    assert hl7.status_code == 422 and "HL7 listener" in hl7.text, hl7.text
    wait_ended(http, first.json()["id"])

    # Listing by state, node, reference and time.
    listed = http.get("/jobs", params={"state": "completed", "node": "orthanc"}).json()
    assert listed["total"] == 3
    assert {j["id"] for j in listed["items"]} == {move["id"], find["id"], first.json()["id"]}
    by_reference = http.get("/jobs", params={"reference": "ris-order-17"}).json()
    assert [j["id"] for j in by_reference["items"]] == [first.json()["id"]]
    assert http.get("/jobs", params={"created_after": "2999-01-01T00:00:00Z"}).json()["total"] == 0
    assert http.get("/jobs", params={"kind": "move"}).json()["total"] == 1

    # Cancel a job no worker serves: it ends at once.
    idle = {"ae_title": "IDLE", "host": "127.0.0.1", "port": free_port()}
    assert http.post("/nodes", json={"name": "idle", **idle}).status_code == 201
    queued = http.post(
        "/jobs",
        json={
            "kind": "move",
            "node": "idle",
            "level": "STUDY",
            "keys": {"StudyInstanceUID": study},
        },
    ).json()
    cancelled = http.delete(f"/jobs/{queued['id']}")
    assert cancelled.status_code == 202
    assert cancelled.json() == {"id": queued["id"], "state": "cancelled"}
    assert http.get(f"/jobs/{queued['id']}").json()["state"] == "cancelled"

    # A node with jobs cannot be removed; one without can.
    assert http.delete("/nodes/idle").status_code == 409
    assert http.post("/nodes", json={"name": "spare", **idle}).status_code == 201
    assert http.delete("/nodes/spare").status_code == 204
    assert http.get("/nodes/spare").status_code == 404
    unreachable = http.post("/nodes/idle/echo")
    assert unreachable.status_code == 502 and unreachable.json()["ok"] is False

    # Health: database, broker and SCP each up (the checks are shown to a token).
    health = http.get("/health").json()
    assert health["status"] == "ok", health
    assert set(health["checks"]) == {"database", "broker", "scp"}

    # Metrics: the counts of what was done.
    metrics = http.get("/metrics").text
    assert 'qrfarm_jobs{kind="move",state="completed"} 1.0' in metrics
    assert 'qrfarm_jobs{kind="find",state="completed"} 2.0' in metrics
    assert 'qrfarm_jobs{kind="move",state="cancelled"} 1.0' in metrics
    assert f"qrfarm_received_instances_total {float(len(expected))}" in metrics


def test_bad_input_gets_422_naming_the_field_and_unknown_ids_404(api_farm: ApiFarm) -> None:
    http = api_farm.http()
    node = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}
    assert http.post("/nodes", json=node).status_code == 201

    def error_of(response: httpx.Response) -> tuple[list[Any], str]:
        assert response.status_code == 422, response.text
        detail = response.json()["detail"][0]
        return detail["loc"], detail["msg"]

    loc, msg = error_of(
        http.post(
            "/jobs",
            json={
                "kind": "move",
                "node": "pacs",
                "level": "STUDY",
                "keys": {"StudyInstanceUID": "1.2/../3"},
            },
        )
    )
    assert loc[-1] == "StudyInstanceUID" and "UID" in msg
    loc, msg = error_of(
        http.post("/jobs", json={"kind": "find", "node": "nowhere", "level": "STUDY"})
    )
    assert loc == ["body", "node"] and "nowhere" in msg
    loc, _ = error_of(http.post("/jobs", json={"kind": "fetch", "node": "pacs", "level": "STUDY"}))
    assert loc == ["body", "kind"]
    loc, msg = error_of(
        http.post(
            "/jobs",
            json={
                "kind": "find",
                "node": "pacs",
                "level": "STUDY",
                "keys": {"PatientID": "P1"},
                "callback_url": "http://192.0.2.1/hook",
            },
        )
    )
    # The refusal names the address's class and the setting that would allow it.
    assert loc == ["body", "callback_url"]
    assert "reserved address" in msg and "QRFARM_ALLOWED_HOSTS" in msg
    loc, msg = error_of(
        http.post("/nodes", json={**node, "name": "elsewhere", "host": "192.0.2.1"})
    )
    assert "allow-list" in msg
    loc, msg = error_of(http.put("/prefetch-rules/r1", json={"nodes": [], "max_studies": 0}))
    assert "nodes" in loc or "max_studies" in loc
    # Values that reach the database or pydicom badly formed: refused, never a 500.
    for request in (
        http.build_request("GET", "/jobs", params={"node": "a\x00b"}),
        http.build_request("GET", "/jobs", params={"created_after": "0001-01-01T00:00:00+14:00"}),
        http.build_request(
            "POST",
            "/jobs",
            json={
                "kind": "find",
                "node": "pacs",
                "level": "STUDY",
                "keys": {"PatientID": "P1", "NumberOfStudyRelatedInstances": "abc"},
            },
        ),
        http.build_request(
            "POST",
            "/jobs",
            json={
                "kind": "find",
                "node": "pacs",
                "level": "STUDY",
                "keys": {"PatientID": "P1"},
                "callback_url": "http://[::1/x",
            },
        ),
        http.build_request("POST", "/nodes", json={**node, "name": "long", "host": "0" * 256}),
    ):
        response = http.send(request)
        assert response.status_code == 422, (request.url, response.text)
    assert http.get("/jobs/424242").status_code == 404
    assert http.get("/jobs/424242/instances").status_code == 404
    assert http.delete("/jobs/424242").status_code == 404
    assert http.get("/prefetch/424242").status_code == 404
    assert http.get("/prefetch-rules/none").status_code == 404
    # Nothing of that was recorded.
    assert http.get("/jobs").json()["total"] == 0


def test_prefetch_rules_are_stored_listed_replaced_and_removed(api_farm: ApiFarm) -> None:
    http = api_farm.http()
    rule = {"nodes": ["pacs1", "pacs2"], "modalities": ["ct", "MR"], "max_studies": 2}
    stored = http.put("/prefetch-rules/neuro", json=rule)
    assert stored.status_code == 200
    assert stored.json()["rule"]["modalities"] == ["CT", "MR"]  # modality codes upper-cased
    http.put("/prefetch-rules/chest", json={"nodes": ["pacs1"], "body_parts": ["chest"]})
    assert [r["name"] for r in http.get("/prefetch-rules").json()] == ["chest", "neuro"]
    http.put("/prefetch-rules/neuro", json={**rule, "max_age_days": 365})
    assert http.get("/prefetch-rules/neuro").json()["rule"]["max_age_days"] == 365
    assert http.delete("/prefetch-rules/neuro").status_code == 204
    assert http.get("/prefetch-rules/neuro").status_code == 404
    missing = http.post("/prefetch", json={"patient_id": "P1", "rule_name": "neuro"})
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["body", "rule_name"]
    wildcard = http.post("/prefetch", json={"patient_id": "P*", "rule_name": "chest"})
    assert wildcard.status_code == 422 and "wildcard" in wildcard.text
