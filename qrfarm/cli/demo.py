"""`qrfarm demo`: the whole farm on this machine, with nothing else running.

A sandbox PACS (pure Python) filled with synthetic studies, the farm as
`qrfarm serve` runs it (SQLite, embedded broker), and a find, a move and a
get through it, each followed to its reconciled end.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..client import Client
from ..config import Settings
from ..dicom import Level
from ..jobs.nodes import NodeSpec, upsert_node
from ..models import make_engine, session_factory, upgrade
from ..sandbox.pacs import SandboxPacs
from ..sandbox.synthetic import generate_corpus
from .common import EXIT_FAILURE, EXIT_OK, app, out, run
from .serve import supervise

WAIT_S = 180.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@app.command()
def demo(
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Keep everything here (default: a temp folder).")
    ] = None,
) -> None:
    """Run a sandbox PACS and the farm, then a find, a move and a get through it."""

    def action(_settings: Settings) -> int:
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            return _demo(directory)
        with tempfile.TemporaryDirectory(prefix="qrfarm-demo-") as scratch:
            return _demo(Path(scratch))

    run(action)


def _demo(root: Path) -> int:
    scp_port = _free_port()
    # The farm's children read their settings from the environment.
    os.environ.update(
        QRFARM_DATABASE_URL=f"sqlite:///{root / 'qrfarm.db'}",
        QRFARM_STORAGE_ROOT=str(root / "storage"),
        QRFARM_DATA_DIR=str(root / "data"),
        QRFARM_SCP_PORT=str(scp_port),
        QRFARM_API_PORT=str(_free_port()),
        QRFARM_ALLOWED_HOSTS="127.0.0.1",
        QRFARM_RECONCILE_GRACE_S="2",
        QRFARM_SCHEDULER_INTERVAL_S="1",
    )
    os.environ.pop("QRFARM_BROKER_URL", None)
    settings = Settings()
    out.print("making synthetic studies ...")
    corpus = generate_corpus(root / "pacs", large_study_instances=60)
    sandbox = SandboxPacs(
        [i.path for i in corpus.instances],
        destinations={settings.scp_ae_title: ("127.0.0.1", scp_port)},
    )
    pacs_port = sandbox.start("127.0.0.1", 0)
    out.print(f"sandbox PACS SANDBOX@127.0.0.1:{pacs_port}: {len(corpus.instances)} instances")
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    with session_factory(engine)() as session, session.begin():
        upsert_node(session, NodeSpec("sandbox", "SANDBOX", "127.0.0.1", pacs_port))
    engine.dispose()
    stop = threading.Event()
    logs = root / "logs"
    out.print(f"the farm's logs: {logs}")
    farm = threading.Thread(target=supervise, args=(settings, 1, stop, logs), daemon=True)
    farm.start()
    client = Client.from_settings(settings)
    try:
        jobs = _run_jobs(client)
    finally:
        client.close()
        stop.set()
        farm.join(60)
        sandbox.stop()
    table = Table(
        "job", "kind", "state", "expected", "reported completed", "recorded", "answers", "error"
    )
    for summary in jobs:
        is_find = summary["kind"] == "find"
        table.add_row(
            str(summary["id"]),
            summary["kind"],
            summary["state"],
            _text(summary["expected"]),
            _text(summary["reported"]["completed"]),
            _text(None if is_find else summary["recorded"]),
            _text(summary["answers"]),
            summary["error"] or "",
        )
    out.print(table)
    ok = all(s["state"] == "completed" for s in jobs)
    out.print("every job reconciled and completed" if ok else "not every job completed")
    return EXIT_OK if ok else EXIT_FAILURE


def _text(value: object) -> str:
    return "-" if value is None else str(value)


def _run_jobs(client: Client) -> list[dict[str, Any]]:
    out.print("find: the studies of patient P004 ...")
    find = client.wait(client.find("sandbox", Level.STUDY, {"PatientID": "P004"}), WAIT_S)
    answers = client.results(int(find["id"]))
    study_uid = str(answers[0]["0020000D"]["Value"][0])
    out.print(f"move: study {study_uid} to the farm's storage SCP ...")
    move = client.wait(client.move("sandbox", Level.STUDY, {"StudyInstanceUID": study_uid}), WAIT_S)
    out.print("get: the same study over the worker's own association ...")
    get = client.wait(client.get("sandbox", Level.STUDY, {"StudyInstanceUID": study_uid}), WAIT_S)
    return [find, move, get]
