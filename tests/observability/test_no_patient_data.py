"""No patient data in logs, traces or metrics, with everything turned up.

A farm of real processes (storage SCP, worker, scheduler, REST API, HL7
listener; Redis and PostgreSQL), every one logging at DEBUG (``-vv``) and
exporting spans to an OTLP receiver in this test, runs against Orthanc: finds
(one keyed on a patient's name, one returning every patient's name and birth
date), a move, a get, a prefetch through the API, a prefetch started by an HL7
order (and a refused HL7 message), and a direct find from the command line.
Then every log file, every span (names, attributes, events, status), every
``/metrics`` page and every webhook body is searched for the synthetic
patients' name components, IDs and birth dates (see ``phi`` for how): none.

So that the search cannot pass by missing, the same matcher must find every
patient's name components, ID and birth date in the find's answers read back
through the API, and the logs must hold DEBUG lines of every process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from qrfarm.jobs.nodes import NodeSpec
from qrfarm.models import PREFETCH_ENDED, Prefetch
from qrfarm.sandbox.synthetic import Corpus
from qrfarm.workflow.rules import Rule, save_rule
from tests.api.conftest import WEBHOOK_SECRET, ApiFarm, WebhookReceiver
from tests.farm.conftest import Farm, make_farm
from tests.peers.orthanc import OrthancPeer
from tests.peers.ports import free_port, wait_for_port

from .otlp import OtlpReceiver
from .phi import Finding, corpus_patients, find_in, find_in_files, terms_of

TIMEOUT_S = 120.0
ENDED = {"completed", "partial", "failed", "cancelled"}
SPANS_EXPECTED = {
    "qrfarm.job.submit",
    "qrfarm.job.run",
    "dicom.associate",
    "dicom.c-find",
    "dicom.c-move",
    "dicom.c-get",
    "qrfarm.scp.c-store",
    "qrfarm.job.reconcile",
}


def _start(
    farm: Farm, name: str, *argv: str, env: dict[str, str] | None = None, port: int | None = None
) -> None:
    """A farm process at DEBUG (``Farm.start`` gives -v, this adds the second)."""
    process = farm.start(name, "-v", *argv, env=env)
    if port is not None and not wait_for_port(
        port, timeout=60, still_running=lambda: process.poll() is None
    ):
        pytest.fail(f"qrfarm {name} did not start:\n{farm.logs()}")


def _mllp(port: int, text: str) -> str:
    """Send one HL7 message over MLLP; its acknowledgement."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"\x0b" + text.encode("utf-8") + b"\x1c\r")
        answer = b""
        while not answer.endswith(b"\x1c\r"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer.strip(b"\x0b\x1c\r").decode("utf-8")


def _hl7(message_type: str, control_id: str, pid: str, accession: str) -> str:
    segments = [
        f"MSH|^~\\&|RIS|HOSP|QRFARM|PACS|20240102030405||{message_type}|{control_id}|P|2.5"
        "|||||||UNICODE UTF-8",
        pid,
        "PV1|1|O",
        f"ORC|NW|{accession}|FILLER-{accession}",
        "|".join(["OBR", "1", accession, f"F{accession}", "MR^MR", *[""] * 13, accession]),
    ]
    return "".join(f"{s}\r" for s in segments)


def _wait_job(api: ApiFarm, http: httpx.Client, job_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        job: dict[str, Any] = http.get(f"/jobs/{job_id}").json()
        if job["state"] in ENDED:
            return job
        time.sleep(0.3)
    pytest.fail(f"job {job_id} did not end:\n{api.farm.logs()}")


def _wait_prefetches(farm: Farm, count: int) -> list[Prefetch]:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        with farm.client.sessions() as session:
            rows = list(session.scalars(select(Prefetch)))
        if len(rows) >= count and all(r.state in PREFETCH_ENDED for r in rows):
            return rows
        time.sleep(0.5)
    pytest.fail(f"prefetches did not end:\n{farm.logs()}")


def _report(findings: list[Finding]) -> str:
    shown = "\n".join(str(f) for f in findings[:40])
    return f"{len(findings)} occurrences of patient data:\n{shown}"


@pytest.fixture
def farm(tmp_path: Path, qrfarm_scp_port: int):  # type: ignore[no-untyped-def]
    with make_farm("redis-postgresql", tmp_path / "farm", qrfarm_scp_port) as farm:
        yield farm


def test_no_name_id_or_birth_date_in_any_log_span_metric_or_webhook_at_debug(
    farm: Farm, orthanc: OrthancPeer, corpus: Corpus, tmp_path: Path
) -> None:
    patients = corpus_patients(corpus)
    terms = terms_of(patients)
    by_id = {p.patient_id: p for p in patients}
    assert len(by_id) == 5 and all(len(c) >= 3 for p in patients for c in p.name_components)

    receiver = OtlpReceiver()
    receiver.start()
    hooks = WebhookReceiver()
    hooks.start()
    try:
        farm.env["QRFARM_OTLP_ENDPOINT"] = receiver.endpoint
        farm.env["QRFARM_WEBHOOK_SECRET"] = WEBHOOK_SECRET
        hl7_port = free_port()
        farm.env["QRFARM_HL7_HOST"] = "127.0.0.1"
        farm.env["QRFARM_HL7_PORT"] = str(hl7_port)
        farm.env["QRFARM_HL7_RULES"] = json.dumps({"ORM^O01": "knee"})
        farm.register(NodeSpec("orthanc", orthanc.ae_title, "127.0.0.1", orthanc.port))
        with farm.client.sessions() as session, session.begin():
            save_rule(session, "knee", Rule(nodes=["orthanc"], modalities=["MR"], max_studies=1))
        metrics = {name: free_port() for name in ("scp", "worker", "scheduler")}
        _start(
            farm,
            "scp",
            "scp",
            env={"QRFARM_METRICS_PORT": str(metrics["scp"])},
            port=int(farm.env["QRFARM_SCP_PORT"]),
        )
        _start(
            farm,
            "worker",
            "worker",
            "--concurrency",
            "2",
            env={"QRFARM_METRICS_PORT": str(metrics["worker"])},
            port=metrics["worker"],
        )
        _start(
            farm, "scheduler", "scheduler", env={"QRFARM_METRICS_PORT": str(metrics["scheduler"])}
        )
        _start(farm, "hl7", "hl7", port=hl7_port)
        api_port = free_port()
        farm.env["QRFARM_API_PORT"] = str(api_port)
        _start(farm, "api", "api", port=api_port)
        api = ApiFarm(farm, api_port, "")
        api.token = api.issue("phi-test")

        studies = corpus.studies()
        greek_study = next(s for s, i in studies.items() if i[0].patient_id == "P005")
        latin1_series = next(s for s, i in corpus.series().items() if i[0].patient_id == "P002")
        latin1_study = corpus.series()[latin1_series][0].study_uid
        with api.http() as http:
            jobs = {
                "find patients": {
                    "kind": "find",
                    "node": "orthanc",
                    "root": "patient",
                    "level": "PATIENT",
                    "keys": {"PatientID": "*", "PatientName": None, "PatientBirthDate": None},
                },
                "find by name": {
                    "kind": "find",
                    "node": "orthanc",
                    "level": "STUDY",
                    "keys": {"PatientName": "Müller*", "PatientID": None, "PatientBirthDate": None},
                },
                "find by id": {
                    "kind": "find",
                    "node": "orthanc",
                    "level": "STUDY",
                    "keys": {"PatientID": "P003", "PatientName": None, "PatientBirthDate": None},
                },
                "move": {
                    "kind": "move",
                    "node": "orthanc",
                    "level": "STUDY",
                    "keys": {"StudyInstanceUID": greek_study},
                    "callback_url": hooks.url,
                },
                "get": {
                    "kind": "get",
                    "node": "orthanc",
                    "level": "SERIES",
                    "callback_url": hooks.url,
                    "keys": {"StudyInstanceUID": latin1_study, "SeriesInstanceUID": latin1_series},
                },
            }
            ids = {}
            for what, body in jobs.items():
                answer = http.post("/jobs", json=body)
                assert answer.status_code == 201, (what, answer.text)
                ids[what] = answer.json()["id"]
            prefetch = http.post(
                "/prefetch",
                json={
                    "patient_id": "P001",
                    "rule": {"nodes": ["orthanc"], "modalities": ["MR"], "max_studies": 1},
                    "callback_url": hooks.url,
                },
            )
            assert prefetch.status_code == 201, prefetch.text

            # An order for P003 (a UTF-8 name), and a message of a type without a rule.
            stefan = by_id["P003"]
            pid = (
                f"PID|1||P003^^^HOSP^MR||{'^'.join(stefan.name_components)}||{stefan.birth_date}|M"
            )
            ack = _mllp(hl7_port, _hl7("ORM^O01", "PHI-1", pid, "ACC-PHI-1"))
            assert "|AA|" in ack, ack
            smith = by_id["P004"]
            refused = _mllp(
                hl7_port,
                _hl7(
                    "ADT^A08",
                    "PHI-2",
                    f"PID|1||P004^^^HOSP^MR||{'^'.join(smith.name_components)}||{smith.birth_date}|F",
                    "ACC-PHI-2",
                ),
            )
            assert "|AA|" not in refused, refused

            ended = {what: _wait_job(api, http, job_id) for what, job_id in ids.items()}
            for what, job in ended.items():
                assert job["state"] == "completed", (what, job)
            for row in _wait_prefetches(farm, 2):
                assert row.state.value == "completed", (row.id, row.state)

            # The positive control: the answers hold every term the search looks for.
            answers = http.get(f"/jobs/{ids['find patients']}/results", params={"limit": 100}).text
            missing = [t for t in terms if not find_in("results", answers, [t])]
            assert not missing, f"the matcher misses {[t.text for t in missing]} in {answers}"

            pages = {"api /metrics": http.get("/metrics").text}
        for name, port in metrics.items():
            pages[f"{name} /metrics"] = httpx.get(
                f"http://127.0.0.1:{port}/metrics", trust_env=False
            ).text

        # A direct find from the command line, at DEBUG: its answers go to
        # stdout (the output asked for), its log to stderr.
        with (tmp_path / "farm" / "cli-direct.log").open("wb") as log:
            direct = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "qrfarm.cli",
                    "-vv",
                    "find",
                    f"{orthanc.ae_title}@127.0.0.1:{orthanc.port}",
                    "--direct",
                    "--level",
                    "STUDY",
                    "-k",
                    "PatientID=P005",
                    "-k",
                    "PatientName",
                    "-k",
                    "PatientBirthDate",
                    "--json",
                ],
                env={**os.environ, **farm.env},
                stdout=subprocess.PIPE,
                stderr=log,
                timeout=60,
                check=False,
            )
        assert direct.returncode == 0, (tmp_path / "farm" / "cli-direct.log").read_text()
        assert find_in("stdout", direct.stdout, terms), "the direct find answered no patient"

        # Spans: wait for every kind expected (a batch is sent every 5 s).
        deadline = time.monotonic() + 30
        while not receiver.names() >= SPANS_EXPECTED and time.monotonic() < deadline:
            time.sleep(0.5)
        assert receiver.names() >= SPANS_EXPECTED, sorted(receiver.names())
        deadline = time.monotonic() + 10
        while not hooks.deliveries and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(hooks.deliveries) >= 3, hooks.deliveries
    finally:
        receiver.stop()
        hooks.stop()
        farm.stop_all()

    logs = sorted((tmp_path / "farm").glob("*.log"))
    for path in logs:
        assert " DEBUG " in path.read_text(errors="replace"), f"{path.name} has no DEBUG line"
    findings = find_in_files(logs, terms)
    for span in receiver.spans:
        findings += find_in(f"span {span.service} {span.name}", "\n".join(span.strings()), terms)
    for name, page in pages.items():
        findings += find_in(name, page, terms)
    for delivery in hooks.deliveries:
        findings += find_in(f"webhook {delivery.path}", delivery.body, terms)
    assert not findings, _report(findings)
