"""Bulk actions by filter over REST and the command line, on a real farm: every
partial job of one node is retried (and then fetches what it missed), the
other node's and the other states' jobs are left alone; each answer says how
many jobs it touched, and the audit trail names each job."""

from __future__ import annotations

import json

from sqlalchemy import select

from qrfarm.dicom import Root
from qrfarm.jobs.nodes import NodeSpec
from qrfarm.models import AuditEvent, Job, JobKind, JobState, NodeRecord
from qrfarm.sandbox.synthetic import Corpus
from tests.cli.conftest import qrfarm
from tests.conftest import QRFARM_SCP_AE
from tests.farm.conftest import sandbox

from .conftest import ApiFarm


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


def test_bulk_retry_of_every_partial_job_of_one_node(
    api_farm: ApiFarm, corpus: Corpus, qrfarm_scp_port: int
) -> None:
    farm = api_farm.farm
    studies = sorted(corpus.studies().items())
    with sandbox(corpus, qrfarm_scp_port) as pacs:
        port = int(pacs.port)  # type: ignore[attr-defined]
        farm.register(NodeSpec("a", "SANDBOX", "127.0.0.1", port))
        farm.register(NodeSpec("b", "SANDBOX", "127.0.0.1", port))
        a_partial = [
            _partial_move(api_farm, "a", study, [instances[0].sop_uid])
            for study, instances in studies[:3]
        ]
        a_failed = _partial_move(api_farm, "a", studies[3][0], [], state=JobState.FAILED)
        b_partial = _partial_move(api_farm, "b", studies[4][0], [studies[4][1][0].sop_uid])
        farm.start_scp()
        farm.start_worker("a", "b", concurrency=1)

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
