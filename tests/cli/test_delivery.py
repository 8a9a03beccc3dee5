"""Delivering through the command: a node registered as a destination, a
move sent to it and verified there, and a forward of what a finished move
brought into the farm; a destination-only node is never asked as a source."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qrfarm.jobs.nodes import NodeSpec
from qrfarm.sandbox.destination import SandboxDestination
from qrfarm.sandbox.synthetic import Corpus
from tests.farm.conftest import make_farm, sandbox
from tests.peers.ports import free_port

from .conftest import CliFarm


@pytest.fixture(scope="module")
def delivery_farm(
    tmp_path_factory: pytest.TempPathFactory, corpus: Corpus
) -> Iterator[tuple[CliFarm, SandboxDestination]]:
    """An embedded farm, the sandbox PACS as source (it knows DEST), and
    DEST, a sandbox destination registered through the command."""
    scp_port = free_port()
    root = tmp_path_factory.mktemp("cli-delivery")
    destination = SandboxDestination(Path(root) / "dest", ae_title="DEST")
    dest_port = destination.start()
    try:
        with make_farm("embedded", root, scp_port) as farm, sandbox(corpus, scp_port) as pacs:
            pacs.destinations["DEST"] = ("127.0.0.1", dest_port)  # type: ignore[attr-defined]
            farm.register(NodeSpec("sandbox", "SANDBOX", "127.0.0.1", int(pacs.port)))  # type: ignore[attr-defined]
            cli = CliFarm(farm, int(pacs.port))  # type: ignore[attr-defined]
            added = cli.run(
                "node", "add", "reading", f"DEST@127.0.0.1:{dest_port}", "--role", "destination"
            )
            assert added.returncode == 0, added.stderr + added.stdout
            farm.start_scp()
            farm.start_worker(concurrency=1)
            yield cli, destination
    finally:
        destination.stop()


def _json(cli: CliFarm, *args: str) -> Any:
    run = cli.run(*args, "--json")
    assert run.returncode == 0, run.stderr + run.stdout
    return json.loads(run.stdout)


def _studies(corpus: Corpus) -> list[tuple[str, set[str]]]:
    """Two small studies, with their instances' UIDs."""
    small = sorted(
        (uid, {i.sop_uid for i in found})
        for uid, found in corpus.studies().items()
        if 2 <= len(found) <= 8
    )
    return small[:2]


def test_a_move_and_a_forward_reach_a_registered_destination_verified_there(
    delivery_farm: tuple[CliFarm, SandboxDestination], corpus: Corpus
) -> None:
    cli, destination = delivery_farm
    (moved_study, moved), (forwarded_study, forwarded) = _studies(corpus)

    node = _json(cli, "node", "show", "reading")
    assert node["role"] == "destination", node
    refused = cli.run("move", "reading", "-k", f"StudyInstanceUID={moved_study}")
    assert refused.returncode != 0
    assert "reading" in refused.stderr and "source" in refused.stderr, refused.stderr

    # A third-party move: the sandbox sends to DEST, the farm verifies there.
    move = _json(
        cli,
        "move",
        "sandbox",
        "--dest",
        "reading",
        "-k",
        f"StudyInstanceUID={moved_study}",
        "--wait",
    )
    assert move["state"] == "completed", move
    assert move["destination"] == "DEST"
    assert move["verified_by"] == "find" and move["confirmed"] == len(moved)
    assert moved <= destination.held

    # Into the farm, then forwarded on from what it holds.
    into_farm = _json(cli, "move", "sandbox", "-k", f"StudyInstanceUID={forwarded_study}", "--wait")
    assert into_farm["state"] == "completed", into_farm
    assert not forwarded & destination.held
    forward = _json(cli, "forward", str(into_farm["id"]), "--dest", "reading", "--wait")
    assert forward["kind"] == "forward" and forward["state"] == "completed", forward
    assert forward["verified_by"] == "find" and forward["confirmed"] == len(forwarded)
    assert forwarded <= destination.held
