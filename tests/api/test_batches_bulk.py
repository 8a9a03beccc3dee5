"""Batches and bulk actions over REST and the command line, on one real farm
(API, storage SCP, scheduler, a worker following every node, the sandbox PACS):

* a batch's rows by study UID and by accession run to their end while a row
  naming an unknown node is reported by row and column; results as CSV;
* every partial job of one node is retried by filter (and fetches what it
  missed); the other node's, and other states, are left alone; each answer
  says how many jobs it touched, and the audit trail names each job.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from qrfarm.dicom import Root
from qrfarm.jobs.nodes import NodeSpec
from qrfarm.models import AuditEvent, Job, JobKind, JobState, NodeRecord
from qrfarm.sandbox.synthetic import Corpus
from tests.cli.conftest import qrfarm
from tests.conftest import QRFARM_SCP_AE
from tests.farm.conftest import make_farm, sandbox

from .conftest import ApiFarm, start_api


@pytest.fixture(scope="module")
def farm_api(
    tmp_path_factory: pytest.TempPathFactory, corpus: Corpus, qrfarm_scp_port: int
) -> Iterator[ApiFarm]:
    root = tmp_path_factory.mktemp("batches-bulk")
    with (
        sandbox(corpus, qrfarm_scp_port) as pacs,
        make_farm("redis-postgresql", root, qrfarm_scp_port) as farm,
    ):
        port = int(pacs.port)  # type: ignore[attr-defined]
        for name in ("pacs", "a", "b"):
            farm.register(NodeSpec(name, "SANDBOX", "127.0.0.1", port))
        api = start_api(farm)
        farm.start_scp()
        farm.start("scheduler", "scheduler")  # advances retrievals by accession
        farm.start_worker(concurrency=1)  # every node's queue
        yield api


def _accession(corpus: Corpus, study: str) -> str:
    path = next(i.path for i in corpus.instances if i.study_uid == study)
    return str(pydicom.dcmread(path, stop_before_pixels=True).AccessionNumber)


def test_a_batch_over_rest_runs_its_good_rows_and_reports_the_bad_one(
    farm_api: ApiFarm, corpus: Corpus, tmp_path: Path
) -> None:
    api_farm = farm_api
    farm = api_farm.farm
    (first, first_instances), (second, _) = sorted(corpus.studies().items())[:2]
    document = (
        "study_uid,accession,source\n"
        f"{first},,pacs\n"
        f",{_accession(corpus, second)},pacs\n"
        "1.2.3,,nowhere\n"
    )
    with api_farm.http() as http:
        created = http.post("/batches", content=document, headers={"Content-Type": "text/csv"})
        assert created.status_code == 201, created.text
        batch = created.json()
        assert created.headers["Location"] == f"/batches/{batch['id']}"
        assert (batch["rows"], batch["children"], batch["row_errors"]) == (3, 2, 1)
        assert batch["errors"][0]["row"] == 3 and batch["errors"][0]["column"] == "source"
        deadline = time.monotonic() + 120
        while not batch["done"]:
            assert time.monotonic() < deadline, (batch, farm.logs())
            time.sleep(0.5)
            batch = http.get(f"/batches/{batch['id']}").json()
        assert batch["progress"]["by_state"] == {"completed": 2}, batch
        results = http.get(f"/batches/{batch['id']}/results.csv")
        assert results.status_code == 200
        assert results.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(results.text)))
        assert [r["outcome"] for r in rows] == ["completed", "completed", "refused"]
        assert rows[0]["recorded"] == str(len(first_instances))
        assert rows[1]["retrieval_id"] and rows[2]["error_column"] == "source"
        assert http.get("/batches/999999").status_code == 404
        unreadable = http.post(
            "/batches", content=b"x,y\n1,2\n", headers={"Content-Type": "text/csv"}
        )
        assert unreadable.status_code == 422 and "unknown column" in unreadable.text

    # The same file through the command line.
    file = tmp_path / "batch.csv"
    file.write_text(document)
    submitted = qrfarm("batch", "submit", str(file), "--json", env=farm.env)
    assert submitted.returncode == 0, submitted.stderr
    summary = json.loads(submitted.stdout)
    assert (summary["children"], summary["row_errors"]) == (2, 1)
    out = tmp_path / "results.csv"
    written = qrfarm("batch", "results", str(summary["id"]), "--out", str(out), env=farm.env)
    assert written.returncode == 0, written.stderr
    assert len(list(csv.DictReader(out.open()))) == 3


def _partial_move(
    api: ApiFarm, node: str, study: str, missing: list[str], **columns: object
) -> int:
    """A move as the farm leaves one that ended partial: these instances missing."""
    with api.farm.client.sessions() as session, session.begin():
        node_id = session.scalar(select(NodeRecord.id).where(NodeRecord.name == node))
        job = Job(
            kind=JobKind.MOVE,
            root=Root.STUDY.value,
            level="STUDY",
            identifier={
                "00080052": {"vr": "CS", "Value": ["STUDY"]},
                "0020000D": {"vr": "UI", "Value": [study]},
            },
            node_id=node_id,
            destination=QRFARM_SCP_AE,
            state=columns.pop("state", JobState.PARTIAL),
            missing_uids=missing,
            attempt_count=1,
            max_attempts=1,
            error="instances missing",
            **columns,
        )
        session.add(job)
        session.flush()
        return job.id


def _state(api: ApiFarm, job_id: int) -> str:
    return str(api.farm.client.status(job_id)["state"])


def test_bulk_retry_of_every_partial_job_of_one_node(farm_api: ApiFarm, corpus: Corpus) -> None:
    api_farm = farm_api
    farm = api_farm.farm
    studies = sorted(corpus.studies().items())
    a_partial = [
        _partial_move(api_farm, "a", study, [instances[0].sop_uid])
        for study, instances in studies[:3]
    ]
    a_failed = _partial_move(api_farm, "a", studies[3][0], [], state=JobState.FAILED)
    b_partial = _partial_move(api_farm, "b", studies[4][0], [studies[4][1][0].sop_uid])

    with api_farm.http() as http:
        answer = http.post("/jobs/actions/retry", json={"node": "a", "state": "partial"})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"touched": 3, "job_ids": a_partial}
        # An empty filter would take every job: refused, naming why.
        empty = http.post("/jobs/actions/retry", json={})
        assert empty.status_code == 422
        assert "at least one of node" in empty.text
        # A token that may only read may not act.
        reader = api_farm.issue("reader", ("read",))
        with api_farm.http(reader) as read_only:
            assert read_only.post("/jobs/actions/cancel", json={"node": "b"}).status_code == 403

    for job_id, (_, instances) in zip(a_partial, studies[:3], strict=True):
        summary = farm.wait(job_id, timeout=120)
        assert summary["state"] == "completed", summary
        # What was missing arrived.
        assert instances[0].sop_uid in {r.sop_instance_uid for r in farm.rows(job_id)}
    assert _state(api_farm, a_failed) == "failed"
    assert _state(api_farm, b_partial) == "partial"

    # The same through the command line, for node b.
    done = qrfarm("bulk", "retry", "--node", "b", "--state", "partial", "--json", env=farm.env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"touched": 1, "job_ids": [b_partial]}
    assert farm.wait(b_partial, timeout=120)["state"] == "completed"

    with farm.client.sessions() as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.action.like("job%"))).all()
    retried = {(r.job_id, r.actor_kind) for r in rows if r.action == "job.retry"}
    assert retried == {*((j, "token") for j in a_partial), (b_partial, "os_user")}
    summaries = [r for r in rows if r.action.startswith("jobs.bulk_retry")]
    assert {r.actor_kind for r in summaries} == {"token", "os_user"}
    assert all("node=" in (r.detail or "") for r in rows if r.action == "job.retry")
