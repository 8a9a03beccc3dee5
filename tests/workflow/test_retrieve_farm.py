"""Retrieve by what people have, through a running farm: the studies are found first,
then moved as child jobs of one retrieval; nothing is guessed.

Shown with real peers: a move by accession number on Orthanc and on dcmqrscp
(through the Client, and `qrfarm move NODE --accession`), every instance
recorded; a move by patient ID and date range that leaves out the patient's
studies outside the range and the same ID under another issuer; an
accession number on two patients refused with both named by ID (in the
retrieval's error, not in any log), and one matching nothing refused as such;
the same through POST /retrievals.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from qrfarm.api import tokens
from qrfarm.errors import InvalidRetrieval
from tests.api.conftest import start_api

from .conftest import BY_NUMBER, OrderFarm


@pytest.mark.parametrize(("node", "number"), [("pacs-a", 1), ("pacs-b", 5)])
def test_a_move_by_accession_moves_that_study_as_a_child_job(
    order_farm: OrderFarm, node: str, number: int
) -> None:
    study = BY_NUMBER[number]
    retrieval = order_farm.farm.client.retrieve(node, accession_number=study.accession)
    summary = order_farm.wait_retrieval(retrieval)
    assert summary["state"] == "completed", summary
    assert [s["study_instance_uid"] for s in summary["studies"]] == [study.uid]
    assert [j["kind"] for j in summary["jobs"]] == ["find", "move"]
    assert summary["recorded"] == study.instances
    move = order_farm.farm.client.status(summary["jobs"][1]["id"])
    assert (move["state"], move["recorded"]) == ("completed", study.instances)


def test_qrfarm_move_by_accession_from_the_command_line(order_farm: OrderFarm) -> None:
    study = BY_NUMBER[3]
    result = subprocess.run(
        [
            *(sys.executable, "-m", "qrfarm.cli", "move", "pacs-a"),
            *("--accession", study.accession, "--wait", "--json"),
        ],
        env={**os.environ, **order_farm.farm.env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["state"], summary["recorded"]) == ("completed", study.instances)
    assert summary["criteria"] == {"accession_number": study.accession}


def test_a_move_by_patient_and_dates_takes_only_that_patient_in_that_range(
    order_farm: OrderFarm,
) -> None:
    retrieval = order_farm.farm.client.retrieve(
        "pacs-a", patient_id="PA1", date_from="2024-01-01", date_to="2026-12-31"
    )
    summary = order_farm.wait_retrieval(retrieval)
    # Study 3 is older; study 2 is PA1 of another issuer (HOSP_X).
    assert summary["state"] == "completed", summary
    assert [s["study_instance_uid"] for s in summary["studies"]] == [BY_NUMBER[1].uid]


def test_an_accession_on_two_patients_is_refused_naming_both(order_farm: OrderFarm) -> None:
    retrieval = order_farm.farm.client.retrieve("pacs-a", accession_number="ACC-DUP")
    summary = order_farm.wait_retrieval(retrieval)
    assert summary["state"] == "failed"
    assert summary["error"] == (
        "ambiguous: the accession number is on studies of 2 patients"
        " (PX2 (HOSP_A), PX3 (HOSP_A)); nothing moved"
    )
    assert [j["kind"] for j in summary["jobs"]] == ["find"]
    logs = order_farm.farm.logs()
    assert "PX2" not in logs and "PX3" not in logs


def test_no_match_is_reported_and_nothing_is_moved(order_farm: OrderFarm) -> None:
    retrieval = order_farm.farm.client.retrieve("pacs-b", accession_number="ACC-NONE")
    summary = order_farm.wait_retrieval(retrieval)
    assert (summary["state"], summary["error"]) == ("failed", "no study on pacs-b matches")
    assert summary["studies"] == []


@pytest.mark.parametrize(
    ("criteria", "complaint"),
    [
        ({}, "give one of an accession number"),
        ({"accession_number": "A", "patient_id": "P"}, "not accession number and patient ID"),
        ({"accession_number": "ACC*"}, "no wildcards"),
        ({"patient_id": "PA1", "date_from": "2025-13-01"}, "date from must be a date"),
        ({"patient_id": "PA1", "date_from": "20250101", "date_to": "20240101"}, "ends before"),
        ({"accession_number": "A", "date_from": "20250101"}, "with a patient ID only"),
        ({"study_instance_uid": "1.2.x"}, "not a UID"),
        ({"patient_id": "PA1", "issuer": "HOSP_B"}, "holds patient IDs of issuer HOSP_A"),
    ],
)
def test_a_bad_retrieve_is_refused_naming_what_is_wrong(
    order_farm: OrderFarm, criteria: dict[str, str], complaint: str
) -> None:
    with pytest.raises(InvalidRetrieval, match=complaint):
        order_farm.farm.client.retrieve("pacs-a", **criteria)  # type: ignore[arg-type]


# --- the REST API ----------------------------------------------------------------


@pytest.fixture(scope="module")
def api(order_farm: OrderFarm) -> Iterator[httpx.Client]:
    """``qrfarm api`` on the same farm, and a client holding a submit and read token."""
    running = start_api(order_farm.farm)
    token = running.issue("retrievals", (tokens.Scope.READ, tokens.Scope.SUBMIT))
    with running.http(token) as http:
        yield http


def _wait(api: httpx.Client, location: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        summary: dict[str, Any] = api.get(location).json()
        if summary["ended"]:
            return summary
        time.sleep(0.3)
    raise AssertionError(f"{location} did not end: {summary}")


def test_post_retrievals_by_accession_and_the_ambiguous_one_refused(api: httpx.Client) -> None:
    study = BY_NUMBER[5]
    created = api.post("/retrievals", json={"node": "pacs-b", "accession_number": study.accession})
    assert created.status_code == 201, created.text
    summary = _wait(api, created.headers["Location"])
    assert (summary["state"], summary["recorded"]) == ("completed", study.instances)

    ambiguous = api.post("/retrievals", json={"node": "pacs-a", "accession_number": "ACC-DUP"})
    assert ambiguous.status_code == 201, ambiguous.text
    refused = _wait(api, ambiguous.headers["Location"])
    assert refused["state"] == "failed"
    assert "PX2 (HOSP_A), PX3 (HOSP_A)" in refused["error"]

    bad = api.post(
        "/retrievals", json={"node": "pacs-a", "accession_number": "A", "patient_id": "P"}
    )
    assert bad.status_code == 422
    assert "not accession number and patient ID" in bad.text
    assert api.get("/retrievals/999999").status_code == 404


def test_qrfarm_retrieval_shows_one_and_names_the_patients_of_an_ambiguous_one(
    order_farm: OrderFarm,
) -> None:
    retrieval = order_farm.farm.client.retrieve("pacs-a", accession_number="ACC-DUP")
    result = subprocess.run(
        [sys.executable, "-m", "qrfarm.cli", "retrieval", str(retrieval), "--wait"],
        env={**os.environ, **order_farm.farm.env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr  # failed
    assert f"retrieval {retrieval} on pacs-a: failed" in result.stdout
    assert "PX2 (HOSP_A), PX3 (HOSP_A)" in result.stdout
