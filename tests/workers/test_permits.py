"""Redis permits under long operations: renewed while the association is in
use, so a move that outlasts the permit's TTL many times over never lets a
second association in; and a holder whose permit is gone stops its move."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import redis

from qrfarm.dicom import Level, Node, Root, StatusCategory, Timeouts, build_retrieve_identifier
from qrfarm.errors import PermitLost, RetriableError
from qrfarm.sandbox.pacs import Behaviour, SandboxPacs
from qrfarm.sandbox.synthetic import Corpus
from qrfarm.workers.permits import RedisPermits
from qrfarm.workers.pool import AssociationPool
from tests.conftest import MOVE_DEST_AE
from tests.peers.dcmtk import StoreScp

# The machine's Redis, on a database of these tests' own (the farm tests flush
# theirs), each test under keys of its own.
REDIS_URL = "redis://127.0.0.1:6379/13"
TTL_S = 1.0
# The move outlasts the permit's TTL nine times over (90 s against 10 s).
MOVE_S = 9 * TTL_S


@dataclass
class Rig:
    pacs: SandboxPacs
    node: Node
    study: str
    count: int
    prefix: str
    client: redis.Redis

    def pool(self) -> AssociationPool:
        """A worker process's pool, on the farm's Redis permits."""
        permits = RedisPermits(REDIS_URL, ttl_s=TTL_S, prefix=self.prefix)
        return AssociationPool(permits, "QRFARM", Timeouts())

    def move(self, pool: AssociationPool, done: threading.Event | None = None) -> None:
        """Move the study; ``done`` is set once its final response is in."""
        identifier = build_retrieve_identifier(
            Root.STUDY, Level.STUDY, {"StudyInstanceUID": self.study}
        )
        with pool.query_retrieve(self.node) as conn:
            result = conn.move(identifier, MOVE_DEST_AE)
            if done is not None:
                done.set()
        assert result.final.category is StatusCategory.SUCCESS, result.final.summary()


@pytest.fixture
def rig(corpus: Corpus, storescp: StoreScp, move_dest_port: int) -> Iterator[Rig]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis is not reachable at {REDIS_URL}: {exc}")
    study, instances = next((s, i) for s, i in corpus.studies().items() if 10 <= len(i) <= 20)
    behaviour = Behaviour(retrieve_delay_s=MOVE_S / len(instances))
    pacs = SandboxPacs(
        [i.path for i in corpus.instances],
        destinations={MOVE_DEST_AE: ("127.0.0.1", move_dest_port)},
        behaviour=behaviour,
    )
    port = pacs.start()
    prefix = f"qrfarm-test-{uuid.uuid4().hex[:8]}"
    try:
        yield Rig(
            pacs,
            Node("SANDBOX", "127.0.0.1", port, max_associations=1),
            study,
            len(instances),
            prefix,
            client,
        )
    finally:
        pacs.stop()
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)


@pytest.fixture
def pools(rig: Rig) -> Iterator[Callable[[], AssociationPool]]:
    made: list[AssociationPool] = []

    def make() -> AssociationPool:
        made.append(rig.pool())
        return made[-1]

    try:
        yield make
    finally:
        for pool in made:
            pool.close()


def test_a_move_nine_times_longer_than_the_permit_ttl_never_lets_a_second_association_in(
    rig: Rig, pools: Callable[[], AssociationPool], storescp: StoreScp
) -> None:
    holder, other = pools(), pools()
    done = threading.Event()
    runner = ThreadPoolExecutor(1)
    mover = runner.submit(rig.move, holder, done)
    stats = rig.pacs.behaviour.stats
    while stats.open_associations == 0 and not mover.done():
        time.sleep(0.01)
    let_in = 0
    tries = 0
    # Another worker asks for the node's only permit again and again while the
    # move runs (each ask waits up to a second): it must never get one. (Once
    # the move is done, the holder hands its idle association over: fair.)
    while not done.is_set() and not mover.done():
        tries += 1
        try:
            with other.query_retrieve(rig.node) as conn:
                if not done.is_set():
                    let_in += 1
                conn.echo()
        except RetriableError as exc:
            assert type(exc).__name__ == "NodeBusy", exc  # no permit within its wait
    mover.result()  # the move itself went through
    runner.shutdown()
    assert tries >= 3  # the other worker really asked, over several TTLs
    assert let_in == 0
    # Counted at the PACS: one association at a time, never two.
    assert stats.peak_associations == 1
    assert len(storescp.received_files()) == rig.count


def test_a_holder_whose_permit_is_taken_stops_its_move_with_a_cancel_then_lets_go(
    rig: Rig, pools: Callable[[], AssociationPool], storescp: StoreScp
) -> None:
    holder = pools()
    runner = ThreadPoolExecutor(1)
    mover = runner.submit(rig.move, holder)
    stats = rig.pacs.behaviour.stats
    key = f"{rig.prefix}:permit:{rig.node}:0"
    while not storescp.received_files() and not mover.done():
        time.sleep(0.02)
    # The permit expired and another worker took it (its token, not ours).
    rig.client.set(key, "another-worker", px=60_000)
    with pytest.raises(PermitLost) as stopped:
        mover.result(timeout=60)
    runner.shutdown()
    assert stopped.value.retriable
    assert stats.cancels == 1  # C-CANCEL seen at the PACS
    assert len(storescp.received_files()) < rig.count
    deadline = time.monotonic() + 10
    while stats.open_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats.open_associations == 0  # released, not kept in the pool
    assert rig.client.get(key) == b"another-worker"  # the new holder's permit untouched
