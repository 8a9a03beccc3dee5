"""The qrfarm command's smaller promises: the root a level implies, --version, shell
completion, node remove, and the help of -k."""

from __future__ import annotations

import json
from importlib.metadata import version

from qrfarm.jobs.nodes import NodeSpec

from .conftest import CliFarm, qrfarm


def test_a_level_of_one_root_only_takes_that_root_and_says_so_at_v(cli_farm: CliFarm) -> None:
    spec = f"SANDBOX@127.0.0.1:{cli_farm.pacs_port}"
    direct = cli_farm.run(
        "-v", "find", spec, "--direct", "--level", "PATIENT", "-k", "PatientID=P002", "--json"
    )
    assert direct.returncode == 0, direct.stderr
    assert [a["00100020"]["Value"][0] for a in json.loads(direct.stdout)] == ["P002"]
    assert "patient root" in direct.stderr, direct.stderr
    queued = cli_farm.run(
        "find", "sandbox", "--level", "PATIENT", "-k", "PatientID=P002", "--wait", "--json"
    )
    assert queued.returncode == 0, queued.stderr
    assert [a["00100020"]["Value"][0] for a in json.loads(queued.stdout)] == ["P002"]


def test_a_root_given_that_lacks_the_level_is_still_refused(cli_farm: CliFarm) -> None:
    spec = f"SANDBOX@127.0.0.1:{cli_farm.pacs_port}"
    run = cli_farm.run("find", spec, "--direct", "--root", "study", "--level", "PATIENT")
    assert run.returncode == 4
    assert "PATIENT is not a level of the study root" in run.stderr


def test_version_prints_the_installed_version() -> None:
    run = qrfarm("--version")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"qrfarm {version('qrfarm')}"


def test_shell_completion_is_offered_and_completes_commands() -> None:
    script = qrfarm("--show-completion", "bash")
    assert script.returncode == 0, script.stderr
    assert "_QRFARM_COMPLETE" in script.stdout
    completed = qrfarm(
        env={"_QRFARM_COMPLETE": "complete_bash", "COMP_WORDS": "qrfarm no", "COMP_CWORD": "1"}
    )
    assert "node" in completed.stdout.split(), completed.stdout + completed.stderr


def test_node_remove_removes_a_node_without_jobs_and_refuses_one_with_jobs(
    cli_farm: CliFarm,
) -> None:
    cli_farm.farm.register(NodeSpec("spare", "SPARE", "127.0.0.1", 11112))
    removed = cli_farm.run("node", "remove", "spare")
    assert removed.returncode == 0, removed.stderr
    names = [n["name"] for n in json.loads(cli_farm.run("node", "list", "--json").stdout)]
    assert "spare" not in names and "sandbox" in names
    unknown = cli_farm.run("node", "remove", "spare")
    assert unknown.returncode == 4 and "not registered" in unknown.stderr
    assert cli_farm.run("find", "sandbox", "-k", "PatientID=P001").returncode == 0
    in_use = cli_farm.run("node", "remove", "sandbox")
    assert in_use.returncode == 4 and "job(s)" in in_use.stderr, in_use.stderr


def test_the_key_help_of_move_and_get_describes_retrieve_keys() -> None:
    for command in ("move", "get"):
        run = qrfarm(command, "--help")
        assert run.returncode == 0, run.stderr
        text = " ".join(run.stdout.split())
        assert "unique key" in text, text
        assert "bare Keyword to return" not in text
