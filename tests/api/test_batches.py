"""Batches over REST and the command line on a real farm: rows by study UID and
by accession run to their end, a bad row is reported by row and column while
the others run, and the results come back as CSV."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import pydicom

from qrfarm.jobs.nodes import NodeSpec
from qrfarm.sandbox.synthetic import Corpus
from tests.cli.conftest import qrfarm
from tests.farm.conftest import sandbox

from .conftest import ApiFarm


def _accession(corpus: Corpus, study: str) -> str:
    path = next(i.path for i in corpus.instances if i.study_uid == study)
    return str(pydicom.dcmread(path, stop_before_pixels=True).AccessionNumber)


def test_a_batch_over_rest_runs_its_good_rows_and_reports_the_bad_one(
    api_farm: ApiFarm, corpus: Corpus, qrfarm_scp_port: int, tmp_path: Path
) -> None:
    farm = api_farm.farm
    (first, first_instances), (second, _) = sorted(corpus.studies().items())[:2]
    document = (
        "study_uid,accession,source\n"
        f"{first},,pacs\n"
        f",{_accession(corpus, second)},pacs\n"
        "1.2.3,,nowhere\n"
    )
    with sandbox(corpus, qrfarm_scp_port) as pacs:
        farm.register(NodeSpec("pacs", "SANDBOX", "127.0.0.1", int(pacs.port)))  # type: ignore[attr-defined]
        farm.start_scp()
        farm.start("scheduler", "scheduler")  # advances the retrieval by accession
        farm.start_worker("pacs", concurrency=1)
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
