"""The association pool under a node's limit: an idle association gives its
permit back as soon as another worker waits for it."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from qrfarm.dicom import Level, Node, Root, StatusCategory, Timeouts, build_query_identifier
from qrfarm.errors import NodeBusy
from qrfarm.sandbox.pacs import Behaviour, SandboxPacs
from qrfarm.sandbox.synthetic import Corpus
from qrfarm.workers.permits import FilePermits
from qrfarm.workers.pool import CLOSE_AFTER_IDLE_S, PERMIT_WAIT_S, AssociationPool
from tests.peers.ports import free_port, wait_for_port


@dataclass
class Sandbox:
    pacs: SandboxPacs
    port: int

    def node(self, max_associations: int = 4) -> Node:
        return Node("SANDBOX", "127.0.0.1", self.port, max_associations=max_associations)


@pytest.fixture
def sandbox(corpus: Corpus) -> Iterator[Sandbox]:
    pacs = SandboxPacs([i.path for i in corpus.instances], behaviour=Behaviour())
    port = pacs.start()
    try:
        yield Sandbox(pacs, port)
    finally:
        pacs.stop()


@pytest.fixture
def pools(tmp_path: Path) -> Iterator[Callable[[], AssociationPool]]:
    """Pools of worker processes, as far as permits go: one folder of lock files."""
    made: list[AssociationPool] = []

    def make() -> AssociationPool:
        made.append(AssociationPool(FilePermits(tmp_path / "permits"), "QRFARM", Timeouts()))
        return made[-1]

    try:
        yield make
    finally:
        for pool in made:
            pool.close()


def test_an_idle_association_lets_go_of_the_permit_another_worker_waits_for(
    sandbox: Sandbox, pools: Callable[[], AssociationPool]
) -> None:
    node = sandbox.node(max_associations=1)
    first, second = pools(), pools()
    with first.query_retrieve(node) as conn:
        assert conn.echo().category is StatusCategory.SUCCESS
    # The first keeps its association (and the node's only permit), idle.
    started = time.monotonic()
    with second.query_retrieve(node) as conn:
        assert conn.echo().category is StatusCategory.SUCCESS
    # Within the wait for a permit, not after the idle close (CLOSE_AFTER_IDLE_S).
    assert time.monotonic() - started < PERMIT_WAIT_S
    assert sandbox.pacs.behaviour.stats.peak_associations == 1


def test_an_association_in_steady_use_is_kept_though_another_worker_waits(
    sandbox: Sandbox, pools: Callable[[], AssociationPool]
) -> None:
    """Handing it over between two tasks would only trade one association open
    for another: the waiter gives its job back instead (NodeBusy)."""
    node = sandbox.node(max_associations=1)
    holder, waiter = pools(), pools()
    stop = threading.Event()
    used: set[int] = set()

    def keep_busy() -> None:
        while not stop.is_set():
            with holder.query_retrieve(node) as conn:
                used.add(id(conn))
                conn.echo()
            time.sleep(0.02)

    busy = threading.Thread(target=keep_busy)
    try:
        with holder.query_retrieve(node) as conn:
            used.add(id(conn))
        busy.start()
        with (
            pytest.raises(NodeBusy, match="all its 1 association"),
            waiter.query_retrieve(node),
        ):
            pass
        stop.set()
        busy.join()
        assert len(used) == 1  # one association all along
        assert sandbox.pacs.behaviour.stats.peak_associations == 1
    finally:
        stop.set()
        if busy.is_alive():  # before the pools close
            busy.join()


def test_an_idle_association_is_closed_after_a_few_seconds_and_its_permit_freed(
    sandbox: Sandbox, pools: Callable[[], AssociationPool], tmp_path: Path
) -> None:
    node = sandbox.node(max_associations=1)
    stats = sandbox.pacs.behaviour.stats
    permits = FilePermits(tmp_path / "permits")  # the pools' own folder
    with pools().query_retrieve(node) as conn:
        assert conn.echo().category is StatusCategory.SUCCESS
    assert stats.open_associations == 1  # kept for the next task
    deadline = time.monotonic() + CLOSE_AFTER_IDLE_S + 3

    def closed_and_freed() -> bool:
        # Closed first, then the permit given back: both, a moment apart.
        return stats.open_associations == 0 and permits.held(str(node), 1) == 0

    while not closed_and_freed() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stats.open_associations == 0
    assert permits.held(str(node), 1) == 0


def test_a_resting_association_serves_every_answer_of_each_find(
    sandbox: Sandbox, pools: Callable[[], AssociationPool], corpus: Corpus
) -> None:
    """Between tasks a pooled association rests (its reactor held, not polling):
    the next find on it loses none of its answers."""
    node = sandbox.node()
    pool = pools()
    query = build_query_identifier(Root.STUDY, Level.STUDY, {"PatientID": "*"})
    answers = []
    for _ in range(30):
        with pool.query_retrieve(node) as conn:
            answers.append(len(conn.find(query).matches))
        time.sleep(0.005)
    assert answers == [len(corpus.studies())] * 30
    assert sandbox.pacs.behaviour.stats.peak_associations == 1  # the same one throughout


def test_a_resting_association_the_peer_dropped_is_replaced_not_waited_on(
    pools: Callable[[], AssociationPool],
) -> None:
    """A PACS restarted while our association rested: the next task gets a new one."""
    port = free_port()

    def start_pacs() -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "qrfarm.cli", "sandbox", "--port", str(port)]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(port, timeout=60)
        return process

    pacs = start_pacs()
    node = Node("SANDBOX", "127.0.0.1", port)
    pool = pools()
    try:
        with pool.query_retrieve(node) as conn:
            first = conn
            assert conn.echo().category is StatusCategory.SUCCESS
        pacs.kill()  # its connections go with it
        pacs.wait()
        pacs = start_pacs()
        started = time.monotonic()
        with pool.query_retrieve(node) as conn:
            assert conn is not first
            assert conn.echo().category is StatusCategory.SUCCESS
        # Not after a DIMSE or ACSE timeout (30 s) on the dead one.
        assert time.monotonic() - started < Timeouts().dimse / 2
    finally:
        pacs.kill()
        pacs.wait()
