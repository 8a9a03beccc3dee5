"""The qrfarm command, run as a user runs it, against the real PACS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qrfarm.sandbox.synthetic import Corpus
from tests.conftest import MOVE_DEST_AE
from tests.peers import PacsPeer
from tests.peers.dcmtk import StoreScp


def qrfarm(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qrfarm.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "QRFARM_ALLOWED_HOSTS": "127.0.0.1", "COLUMNS": "200", **env},
        check=False,
    )


def spec(pacs: PacsPeer) -> str:
    return f"{pacs.ae_title}@{pacs.host}:{pacs.port}"


def test_echo(pacs: PacsPeer) -> None:
    run = qrfarm("echo", spec(pacs))
    assert run.returncode == 0, run.stderr
    assert "0x0000 Success" in run.stdout


def test_find_json_is_dicom_json_of_every_match(pacs: PacsPeer, corpus: Corpus) -> None:
    run = qrfarm(
        "find", spec(pacs), "--direct", "--level", "STUDY", "-k", "PatientID=P001", "--json"
    )
    assert run.returncode == 0, run.stderr
    answers = json.loads(run.stdout)
    uids = {a["0020000D"]["Value"][0] for a in answers}
    assert uids == {i.study_uid for i in corpus.patients()["P001"]}


def test_find_table_shows_decoded_names(pacs: PacsPeer) -> None:
    run = qrfarm(
        "find",
        spec(pacs),
        "--direct",
        "--root",
        "patient",
        "--level",
        "PATIENT",
        "-k",
        "PatientID=P002",
        "--no-default-keys",
        "-k",
        "PatientName",
    )
    assert run.returncode == 0, run.stderr
    assert "Müller^Jürgen" in run.stdout
    assert "1 match(es)" in run.stdout


def test_get_writes_every_instance_of_the_series(
    pacs: PacsPeer, corpus: Corpus, tmp_path: Path
) -> None:
    series_uid, instances = next(iter(corpus.series().items()))
    run = qrfarm(
        "get",
        spec(pacs),
        "--direct",
        "--level",
        "SERIES",
        "-k",
        f"StudyInstanceUID={instances[0].study_uid}",
        "-k",
        f"SeriesInstanceUID={series_uid}",
        "--out",
        str(tmp_path / "out"),
    )
    assert run.returncode == 0, run.stderr + run.stdout
    written = {p.stem for p in (tmp_path / "out").glob("*.dcm")}
    assert written == {i.sop_uid for i in instances}
    assert f"completed {len(instances)}, failed 0" in run.stdout


def test_move_reports_counts_and_the_files_arrive(
    pacs: PacsPeer, corpus: Corpus, storescp: StoreScp
) -> None:
    study_uid, instances = next(iter(corpus.studies().items()))
    run = qrfarm(
        "move",
        spec(pacs),
        "--direct",
        "--dest",
        MOVE_DEST_AE,
        "-k",
        f"StudyInstanceUID={study_uid}",
        "--message-id",
        "777",
    )
    assert run.returncode == 0, run.stderr + run.stdout
    assert f"completed {len(instances)}, failed 0" in run.stdout
    assert set(storescp.received_sop_uids()) == {i.sop_uid for i in instances}


def test_move_to_an_unknown_destination_exits_2(pacs: PacsPeer, corpus: Corpus) -> None:
    run = qrfarm(
        "move",
        spec(pacs),
        "--direct",
        "--dest",
        "NOWHERE",
        "-k",
        f"StudyInstanceUID={corpus.large_study_uid}",
    )
    assert run.returncode == 2
    assert "move: 0x" in run.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["find", "X@127.0.0.1:104", "--direct", "--level", "SERIES", "-k", "Modality=CT"],
            "StudyInstanceUID: a SERIES-level query in the study root needs exactly one value",
        ),
        (
            ["get", "X@127.0.0.1:104", "--direct", "--level", "STUDY", "-k", "PatientName=X"],
            "PatientName: not allowed in a study-root STUDY retrieve identifier",
        ),
        (
            ["find", "X@127.0.0.1:104", "--direct", "-k", "StudyDate=20201340"],
            "StudyDate: '20201340' is not a valid DA value",
        ),
        (
            ["find", "X@127.0.0.1:104", "--direct", "-k", "NoSuchKeyword=1"],
            "NoSuchKeyword: not a keyword of the DICOM data dictionary",
        ),
        (["echo", "not-a-node"], "not a configured node name, nor AET@host:port"),
        (["echo", "WAYTOOLONGAETITLE1@127.0.0.1:104"], "must be 1-16 printable ASCII"),
        (
            ["move", "X@127.0.0.1:104", "--direct", "--dest", "A\\B", "-k", "StudyInstanceUID=1.2"],
            "no backslash",
        ),
    ],
)
def test_bad_input_exits_4_naming_what_is_wrong(args: list[str], message: str) -> None:
    run = qrfarm(*args)
    assert run.returncode == 4, run.stdout + run.stderr
    assert message in " ".join(run.stderr.split())


def test_a_host_outside_the_allow_list_is_refused_before_connecting() -> None:
    # 127.0.0.2 is loopback too: even a broken check could send nothing away.
    run = qrfarm("echo", "X@127.0.0.2:104")
    assert run.returncode == 4
    assert "not in the outbound allow-list" in " ".join(run.stderr.split())


def test_nothing_listening_exits_3() -> None:
    from tests.peers.ports import free_port

    run = qrfarm("echo", f"X@127.0.0.1:{free_port()}")
    assert run.returncode == 3
    assert "Connection refused" in run.stderr


def test_configured_node_by_name(pacs: PacsPeer, tmp_path: Path) -> None:
    config = tmp_path / "qrfarm.toml"
    config.write_text(
        f'[nodes.main]\nae_title = "{pacs.ae_title}"\nhost = "127.0.0.1"\nport = {pacs.port}\n'
    )
    run = qrfarm("echo", "main", QRFARM_CONFIG=str(config))
    assert run.returncode == 0, run.stderr


def test_node_add_checks_store_hosts_unless_told_any_host(tmp_path: Path) -> None:
    env = {"QRFARM_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    assert qrfarm("db", "upgrade", **env).returncode == 0
    run = qrfarm("node", "add", "pacs", "PACS@127.0.0.1:104", **env)
    assert run.returncode == 0, run.stderr
    run = qrfarm("node", "add", "nat", "NATPACS@127.0.0.1:105", "--any-host", **env)
    assert run.returncode == 0, run.stderr
    run = qrfarm(
        "node",
        "add",
        "spread",
        "SPREAD@127.0.0.1:106",
        "--store-host",
        "127.0.0.0/30",
        "--store-host",
        "localhost",
        **env,
    )
    assert run.returncode == 0, run.stderr
    listed = qrfarm("node", "list", **env)
    assert listed.returncode == 0, listed.stderr
    # name -> the table's last cell: the hosts its C-STOREs may come from.
    cells = [[c.strip() for c in line.split("│")] for line in listed.stdout.splitlines()]
    store_hosts = {row[1]: row[-2] for row in cells if len(row) > 2 and "@" not in row[1]}
    assert store_hosts["pacs"] == "127.0.0.1"  # its own host, checked
    assert store_hosts["nat"] == "any"
    assert store_hosts["spread"] == "127.0.0.0/30, localhost"
    bad = qrfarm("node", "add", "bad", "BAD@127.0.0.1:107", "--store-host", "10.0.0.0/33", **env)
    assert bad.returncode != 0 and "store host" in bad.stderr
