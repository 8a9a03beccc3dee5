"""`qrfarm job`: what the PACS reported, and what it did not."""

from __future__ import annotations

import json
from typing import Any

from pydicom.dataset import Dataset

from qrfarm.jobs.nodes import NodeSpec
from tests.dicom.fake_pacs import scripted_move_pacs

from .conftest import CliFarm


def success_without_counts(_request: Any) -> list[tuple[Dataset, Dataset | None]]:
    final = Dataset()
    final.Status = 0x0000  # and no Number of Completed/Failed/Warning Sub-operations
    return [(final, None)]


def test_a_final_response_without_counts_shows_as_not_reported(cli_farm: CliFarm) -> None:
    with scripted_move_pacs(success_without_counts) as pacs:
        cli_farm.farm.register(NodeSpec("quiet", pacs.ae_title, pacs.host, pacs.port))
        moved = cli_farm.run("move", "quiet", "-k", "StudyInstanceUID=1.2.3.4", "--wait")
    job_id = moved.stderr.split("job ", 1)[1].split()[0] if "job" in moved.stderr else None
    job_id = job_id or moved.stdout.split("job ", 1)[1].split()[0]
    shown = cli_farm.run("job", job_id)
    assert "not reported" in shown.stdout, shown.stdout
    assert "reported 0" not in shown.stdout and "None" not in shown.stdout, shown.stdout
    document = json.loads(cli_farm.run("job", job_id, "--json").stdout)
    assert document["reported"] == {"completed": None, "failed": None, "warning": None}


def test_a_move_held_by_not_before_says_why_and_is_cancelled_in_bulk(cli_farm: CliFarm) -> None:
    moved = cli_farm.run(
        "move",
        "sandbox",
        "-k",
        "StudyInstanceUID=1.2.3.4",
        "--not-before",
        "2099-01-01T00:00:00",
        "--priority",
        "-10",
        "--json",
    )
    assert moved.returncode == 0, moved.stderr
    job_id = json.loads(moved.stdout)["id"]
    shown = cli_farm.run("job", str(job_id))
    assert "waits: not before 2099-01-01T00:00:00Z" in shown.stdout, shown.stdout
    document = json.loads(cli_farm.run("job", str(job_id), "--json").stdout)
    assert (document["state"], document["priority"]) == ("queued", -10)
    cancelled = cli_farm.run("bulk", "cancel", "--job", str(job_id), "--json")
    assert json.loads(cancelled.stdout) == {"touched": 1, "job_ids": [job_id]}
    again = cli_farm.run("bulk", "cancel", "--job", str(job_id), "--json")
    assert json.loads(again.stdout) == {"touched": 0, "job_ids": []}
    refused = cli_farm.run("bulk", "retry")
    assert refused.returncode == 4 and "at least one of node" in refused.stderr
