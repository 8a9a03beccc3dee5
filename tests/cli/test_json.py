"""`--json`: one JSON document and nothing else on stdout, for every command that prints JSON,
queued or direct, following the job or not."""

from __future__ import annotations

import json
from typing import Any

import pytest

from qrfarm.sandbox.synthetic import Corpus
from tests.conftest import QRFARM_SCP_AE

from .conftest import CliFarm


def only_json(farm: CliFarm, *args: str, codes: tuple[int, ...] = (0,)) -> Any:
    run = farm.run(*args, "--json")
    assert run.returncode in codes, run.stderr + run.stdout
    return json.loads(run.stdout)  # the whole of stdout: one document


def study_uid(corpus: Corpus) -> str:
    return corpus.patients()["P001"][0].study_uid


def test_a_queued_find_prints_its_job_as_json(cli_farm: CliFarm) -> None:
    job = only_json(cli_farm, "find", "sandbox", "-k", "PatientID=P001")
    assert job["kind"] == "find" and isinstance(job["id"], int)


def test_a_queued_find_followed_to_its_end_prints_its_answers_as_dicom_json(
    cli_farm: CliFarm, corpus: Corpus
) -> None:
    answers = only_json(cli_farm, "find", "sandbox", "-k", "PatientID=P001", "--wait")
    assert {a["0020000D"]["Value"][0] for a in answers} == {
        i.study_uid for i in corpus.patients()["P001"]
    }


def test_a_direct_find_prints_dicom_json(cli_farm: CliFarm) -> None:
    spec = f"SANDBOX@127.0.0.1:{cli_farm.pacs_port}"
    answers = only_json(cli_farm, "find", spec, "--direct", "-k", "PatientID=P001")
    assert answers and all("0020000D" in a for a in answers)


@pytest.mark.parametrize("kind", ["move", "get"])
def test_a_queued_retrieve_prints_its_job_as_json(
    cli_farm: CliFarm, corpus: Corpus, kind: str
) -> None:
    queued = only_json(cli_farm, kind, "sandbox", "-k", f"StudyInstanceUID={study_uid(corpus)}")
    assert queued["kind"] == kind
    ended = only_json(
        cli_farm, kind, "sandbox", "-k", f"StudyInstanceUID={study_uid(corpus)}", "--wait"
    )
    assert ended["state"] == "completed", ended
    assert ended["recorded"] == ended["expected"] > 0


def test_a_direct_move_and_get_print_their_final_response_as_json(
    cli_farm: CliFarm, corpus: Corpus, tmp_path: Any
) -> None:
    spec = f"SANDBOX@127.0.0.1:{cli_farm.pacs_port}"
    key = f"StudyInstanceUID={study_uid(corpus)}"
    moved = only_json(cli_farm, "move", spec, "--direct", "--dest", QRFARM_SCP_AE, "-k", key)
    got = only_json(cli_farm, "get", spec, "--direct", "-k", key, "--out", str(tmp_path))
    count = sum(1 for i in corpus.instances if i.study_uid == study_uid(corpus))
    for result in (moved, got):
        assert result["category"] == "success", result
        assert result["completed"] == count
    assert len(got["files"]) == count


def test_job_jobs_and_nodes_print_json(cli_farm: CliFarm) -> None:
    job = only_json(cli_farm, "find", "sandbox", "-k", "PatientID=P002", "--wait")
    assert isinstance(job, list)
    jobs = only_json(cli_farm, "jobs")
    assert jobs and {"id", "kind", "state"} <= set(jobs[0])
    shown = only_json(cli_farm, "job", str(jobs[0]["id"]))
    assert shown["id"] == jobs[0]["id"]
    nodes = only_json(cli_farm, "node", "list")
    assert [n["name"] for n in nodes] == ["sandbox"]
    node = only_json(cli_farm, "node", "show", "sandbox")
    assert node["ae_title"] == "SANDBOX" and "profile" in node


def test_prefetch_prints_json_started_and_followed(cli_farm: CliFarm) -> None:
    started = only_json(cli_farm, "prefetch", "P003", "--node", "sandbox")
    assert isinstance(started["id"], int)
    ended = only_json(cli_farm, "prefetch", "P003", "--node", "sandbox", "--wait", codes=(0, 1))
    assert ended["ended"], ended
