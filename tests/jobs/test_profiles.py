"""Node behaviour profiles come out as each PACS really is: Orthanc, dcmqrscp,
and a test PACS that answers a C-MOVE before storing and names no originator;
and a PACS that refuses a third association is seen to."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import select

from qrfarm.dicom import Level
from qrfarm.jobs import profiles
from qrfarm.jobs.nodes import NodeSpec
from qrfarm.models import NodeRecord
from qrfarm.sandbox.pacs import Behaviour, SandboxPacs
from qrfarm.sandbox.synthetic import Corpus
from tests.conftest import QRFARM_SCP_AE
from tests.farm.conftest import Farm, make_farm
from tests.peers.dcmqrscp import DcmqrscpPeer
from tests.peers.orthanc import OrthancPeer


@contextmanager
def sandbox(corpus: Corpus, scp_port: int, behaviour: Behaviour) -> Iterator[int]:
    pacs = SandboxPacs(
        [i.path for i in corpus.instances],
        destinations={QRFARM_SCP_AE: ("127.0.0.1", scp_port)},
        behaviour=behaviour,
    )
    port = pacs.start()
    try:
        yield port
    finally:
        pacs.stop()


def profile_of(farm: Farm, name: str) -> dict[str, Any]:
    with farm.client.sessions() as session:
        node_id = session.scalar(select(NodeRecord.id).where(NodeRecord.name == name))
        assert node_id is not None
        return profiles.profile(session, node_id)


def retrieve_a_study_both_ways(farm: Farm, node: str, study: str, series: str) -> None:
    move = farm.wait(farm.client.move(node, Level.STUDY, {"StudyInstanceUID": study}))
    assert move["state"] == "completed", (node, move)
    get = farm.wait(
        farm.client.get(
            node, Level.SERIES, {"StudyInstanceUID": study, "SeriesInstanceUID": series}
        )
    )
    assert get["state"] == "completed", (node, get)


def test_profiles_of_orthanc_dcmqrscp_and_a_pacs_that_stores_after_answering(
    tmp_path: Path,
    qrfarm_scp_port: int,
    orthanc: OrthancPeer,
    dcmqrscp: DcmqrscpPeer,
    corpus: Corpus,
) -> None:
    study = next(
        uid for uid, i in corpus.studies().items() if len(i) > 3 and uid != corpus.large_study_uid
    )
    series = next(s for s, i in corpus.series().items() if i[0].study_uid == study)
    with (
        make_farm("embedded", tmp_path, qrfarm_scp_port) as farm,
        sandbox(corpus, qrfarm_scp_port, Behaviour(store_after_answer_s=1.0)) as late_port,
    ):
        farm.register(NodeSpec("orthanc", orthanc.ae_title, "127.0.0.1", orthanc.port))
        farm.register(NodeSpec("dcmqrscp", dcmqrscp.ae_title, "127.0.0.1", dcmqrscp.port))
        farm.register(NodeSpec("late", "SANDBOX", "127.0.0.1", late_port))
        farm.start_scp()
        farm.start("scheduler", "scheduler")
        farm.start_worker(concurrency=2)
        for node in ("orthanc", "dcmqrscp", "late"):
            retrieve_a_study_both_ways(farm, node, study, series)
        seen = {node: profile_of(farm, node) for node in ("orthanc", "dcmqrscp", "late")}

    for node in ("orthanc", "dcmqrscp"):
        assert seen[node]["sends_move_originator"] is True, seen[node]
        assert seen[node]["answers_before_storing"] is False, seen[node]
        assert seen[node]["omits_counts"] is False, seen[node]
        assert seen[node]["sends_pending"] is True, seen[node]
        assert seen[node]["supports_get"] is True, seen[node]
        assert seen[node]["max_associations_held"] >= 1
    assert seen["late"]["sends_move_originator"] is False, seen["late"]
    assert seen["late"]["answers_before_storing"] is True, seen["late"]
    assert seen["late"]["supports_get"] is True, seen["late"]
    assert seen["late"]["rejects_above_associations"] is None


def test_a_pacs_that_refuses_a_third_association_is_seen_to_and_either_runs_as_get(
    tmp_path: Path, qrfarm_scp_port: int, corpus: Corpus
) -> None:
    behaviour = Behaviour(find_delay_s=0.3, max_associations=2)
    with (
        make_farm("redis-postgresql", tmp_path, qrfarm_scp_port) as farm,
        sandbox(corpus, qrfarm_scp_port, behaviour) as port,
    ):
        # Refusals before the limit is learned cost attempts: allow a few.
        farm.env["QRFARM_MAX_ATTEMPTS"] = "10"
        farm.register(NodeSpec("small", "SANDBOX", "127.0.0.1", port, max_associations=4))
        farm.start_scp()
        farm.start("scheduler", "scheduler")
        farm.start_worker("small", concurrency=4)
        jobs = [farm.client.find("small", Level.STUDY, {}) for _ in range(8)]
        for job_id in jobs:
            assert farm.wait(job_id, timeout=240)["state"] == "completed"
        seen = profile_of(farm, "small")
        # Its limit is 2; the farm may see 1 when a new association reaches the
        # PACS before the PACS has let go of one the farm just released: a
        # limit the PACS does accept, never one above it.
        assert seen["rejects_above_associations"] in (1, 2), seen
        assert seen["max_associations_held"] >= 1, seen
        # Once learned, the node's limit is the one it enforces: no more refusals.
        refused = behaviour.stats.refused
        more = [farm.client.find("small", Level.STUDY, {}) for _ in range(6)]
        for job_id in more:
            assert farm.wait(job_id, timeout=240)["state"] == "completed"
        assert behaviour.stats.refused == refused

        # Known to support C-GET (a get ran), a job that allows either runs as one.
        study = next(iter(corpus.studies()))
        got = farm.wait(farm.client.get("small", Level.STUDY, {"StudyInstanceUID": study}))
        assert got["state"] == "completed"
        either = farm.wait(
            farm.client.move(
                "small", Level.STUDY, {"StudyInstanceUID": study}, either_retrieve=True
            )
        )
        assert either["kind"] == "get" and either["state"] == "completed", either
