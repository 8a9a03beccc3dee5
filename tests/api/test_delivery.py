"""Delivery through the REST API, as a workflow engine asks for it: a node
registered as a destination, a move sent to it and verified there, and a
forward of what a finished move brought into the farm."""

from __future__ import annotations

from pathlib import Path

import httpx

from qrfarm.sandbox.destination import SandboxDestination
from qrfarm.sandbox.synthetic import Corpus
from tests.farm.conftest import sandbox

from .conftest import ApiFarm
from .test_routes import wait_ended


def test_a_move_and_a_forward_reach_a_registered_destination_verified_there(
    api_farm: ApiFarm, corpus: Corpus, qrfarm_scp_port: int, tmp_path: Path
) -> None:
    small = sorted(
        (uid, {i.sop_uid for i in found})
        for uid, found in corpus.studies().items()
        if 2 <= len(found) <= 8
    )
    (moved_study, moved), (forwarded_study, forwarded) = small[:2]
    destination = SandboxDestination(tmp_path / "dest", ae_title="DEST")
    dest_port = destination.start()
    try:
        with sandbox(corpus, qrfarm_scp_port) as pacs:
            pacs.destinations["DEST"] = ("127.0.0.1", dest_port)  # type: ignore[attr-defined]
            http = api_farm.http()
            source = {"ae_title": "SANDBOX", "host": "127.0.0.1", "port": pacs.port}  # type: ignore[attr-defined]
            assert http.post("/nodes", json={"name": "sandbox", **source}).status_code == 201
            reading = {"ae_title": "DEST", "host": "127.0.0.1", "port": dest_port}
            added = http.post("/nodes", json={"name": "reading", "role": "destination", **reading})
            assert added.status_code == 201, added.text
            assert added.json()["role"] == "destination"
            api_farm.farm.start_scp()
            api_farm.farm.start_worker()

            def move(node: str, study: str, **extra: str) -> httpx.Response:
                body = {"kind": "move", "node": node, "level": "STUDY"}
                return http.post(
                    "/jobs", json={**body, "keys": {"StudyInstanceUID": study}, **extra}
                )

            refused = move("reading", moved_study)
            assert refused.status_code == 422, refused.text
            assert "source" in refused.text

            sent = move("sandbox", moved_study, destination="reading")
            assert sent.status_code == 201, sent.text
            job = wait_ended(http, sent.json()["id"])
            assert job["state"] == "completed", job
            assert job["destination"] == "DEST"
            assert job["verified_by"] == "find" and job["confirmed"] == len(moved)
            assert moved <= destination.held

            order = {"external_reference": "ORDER-77"}
            into_farm = wait_ended(http, move("sandbox", forwarded_study, **order).json()["id"])
            assert into_farm["state"] == "completed", into_farm
            # A reference is no key to another job: the move's, on a forward, is refused.
            reused = http.post(
                f"/jobs/{into_farm['id']}/forward", json={"destination": "reading", **order}
            )
            assert reused.status_code == 409, reused.text
            unknown = http.post(f"/jobs/{into_farm['id']}/forward", json={"destination": "nowhere"})
            assert unknown.status_code == 422 and "nowhere" in unknown.text, unknown.text
            forward_body = {"destination": "reading", "external_reference": "ORDER-77-F"}
            asked = http.post(f"/jobs/{into_farm['id']}/forward", json=forward_body)
            assert asked.status_code == 201, asked.text
            assert asked.json()["kind"] == "forward"
            # The same forward sent again (a retrying engine) gets its job back.
            again = http.post(f"/jobs/{into_farm['id']}/forward", json=forward_body)
            assert again.status_code == 200, again.text
            assert again.json()["id"] == asked.json()["id"]
            forward = wait_ended(http, asked.json()["id"])
            assert forward["state"] == "completed", forward
            assert forward["verified_by"] == "find" and forward["confirmed"] == len(forwarded)
            assert forwarded <= destination.held
    finally:
        destination.stop()
