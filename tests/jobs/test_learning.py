"""A limit learned from a node's refusals is not for good: after each quiet
period the farm tries the node with one association more (counted at the
PACS), and a refusal at the number tried brings it down again."""

from __future__ import annotations

import time
from dataclasses import replace

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.dicom import Level, Timeouts
from qrfarm.jobs import learning, profiles
from qrfarm.jobs.runner import run_job
from qrfarm.models import NodeRecord
from qrfarm.sandbox.synthetic import Corpus
from qrfarm.workers.permits import FilePermits
from qrfarm.workers.pool import AssociationPool
from qrfarm.workers.process import ProfileRecorder

from .conftest import add_job
from .test_runner import Bench, bench, moves_into_scp  # noqa: F401 (the fixture)

QUIET_S = 2.0


def _peak_of_a_move(bench: Bench, study: str) -> int:  # noqa: F811
    """Associations open at once at the PACS while one move runs (with its
    expected instances found on a second association when a permit is free)."""
    stats = bench.pacs.behaviour.stats
    with stats.lock:
        stats.peak_associations = stats.open_associations
    job_id = bench.client.move("pacs", Level.STUDY, {"StudyInstanceUID": study})
    run_job(bench.deps, job_id, "runner-test")
    assert bench.client.status(job_id)["state"] == "completed"
    return stats.peak_associations


def _learned(bench: Bench) -> int | None:  # noqa: F811
    with bench.client.sessions() as session:
        node_id = session.scalar(select(NodeRecord.id).where(NodeRecord.name == "pacs"))
        assert node_id is not None
        rejects_above = profiles.profile(session, node_id, QUIET_S)["rejects_above_associations"]
        return rejects_above  # type: ignore[no-any-return]


def test_a_learned_limit_of_one_climbs_back_after_the_refusals_stop(
    bench: Bench,  # noqa: F811
    corpus: Corpus,
) -> None:
    bench.register(max_associations=2)
    bench.deps.policy = replace(bench.deps.policy, limit_probe_after_s=QUIET_S)
    # The pool tells the node's profile what each association showed, as a worker's does.
    pool = AssociationPool(
        FilePermits(bench.settings.data_dir / "permits"),
        "QRFARM",
        Timeouts(),
        on_association=ProfileRecorder(bench.client.sessions, QUIET_S),
    )
    bench.deps.connections = pool
    behaviour = bench.pacs.behaviour
    study = next(s for s, i in corpus.studies().items() if 10 <= len(i) <= 20)
    try:
        with moves_into_scp(bench):
            # A passing squeeze: the PACS takes one association at a time.
            behaviour.max_associations = 1
            assert _peak_of_a_move(bench, study) == 1
            assert behaviour.stats.refused >= 1  # its second association was refused
            assert _learned(bench) == 1
            # The refusals stop; the learned limit holds for the quiet period...
            behaviour.max_associations = None
            assert _peak_of_a_move(bench, study) == 1
            # ...then the node is tried with one more, and takes it.
            time.sleep(QUIET_S + 0.5)
            assert _peak_of_a_move(bench, study) == 2
            learned = _learned(bench)  # more quiet periods may have passed meanwhile
            assert learned is not None and learned >= 2
    finally:
        pool.close()


def test_a_refusal_at_the_probed_limit_brings_it_down_and_starts_the_quiet_period_again(
    sessions: sessionmaker[Session],
) -> None:
    """One association more per quiet period, up to the node's own limit; a
    refusal at the number probed brings it back below, and waits again."""
    add_job(sessions)  # and its node, "pacs"
    with sessions() as session, session.begin():
        node = session.scalars(select(NodeRecord).where(NodeRecord.name == "pacs")).one()
        node.max_associations = 4
        node_id = node.id

    def limit(at: float) -> int:
        with sessions() as session:
            return learning.node_and_limit(session, node_id, QUIET_S, now=at)[1]

    def refused(at: float, taken: int) -> None:
        with sessions() as session, session.begin():
            profiles.observe_associations(
                session, node_id, rejected_at=taken, probe_after_s=QUIET_S, now=at
            )

    t0 = 1_000_000.0
    assert limit(t0) == 4  # never refused: the node's own
    refused(t0, taken=2)
    assert [limit(t0 + q * QUIET_S) for q in (0, 0.9, 1, 2, 3, 10)] == [1, 1, 2, 3, 4, 4]
    refused(t0 + 2 * QUIET_S, taken=3)  # probed at 3 and refused again
    assert [limit(t0 + q * QUIET_S) for q in (2, 2.9, 3, 4)] == [2, 2, 3, 4]


def test_a_lone_association_refused_shows_the_limit_the_farm_keeps_to(
    sessions: sessionmaker[Session],
) -> None:
    """A node busy elsewhere (or not yet done with the farm's last association)
    refuses the farm's only one: the profile shows the one association the
    farm still uses, never a limit of none."""
    add_job(sessions)  # and its node, "pacs"
    with sessions() as session, session.begin():
        node_id = session.scalars(select(NodeRecord.id).where(NodeRecord.name == "pacs")).one()
        profiles.observe_associations(session, node_id, rejected_at=1, probe_after_s=QUIET_S)
    with sessions() as session:
        shown = profiles.profile(session, node_id, QUIET_S)["rejects_above_associations"]
        used = learning.node_and_limit(session, node_id, QUIET_S)[1]
    assert shown == used == 1
