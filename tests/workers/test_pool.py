"""The association pool under a node's limit: an idle association gives its
permit back as soon as another worker waits for it."""

from __future__ import annotations

import time
from pathlib import Path

from qrfarm.dicom import Node, StatusCategory, Timeouts
from qrfarm.sandbox.pacs import Behaviour, SandboxPacs
from qrfarm.sandbox.synthetic import Corpus
from qrfarm.workers.permits import FilePermits
from qrfarm.workers.pool import AssociationPool


def test_an_idle_association_lets_go_of_the_permit_another_worker_waits_for(
    tmp_path: Path, corpus: Corpus
) -> None:
    pacs = SandboxPacs([i.path for i in corpus.instances[:5]], behaviour=Behaviour())
    port = pacs.start()
    node = Node("SANDBOX", "127.0.0.1", port, max_associations=1)
    # Two worker processes, as far as permits go: one folder of lock files.
    first = AssociationPool(FilePermits(tmp_path / "permits"), "QRFARM", Timeouts())
    second = AssociationPool(FilePermits(tmp_path / "permits"), "QRFARM", Timeouts())
    try:
        with first.query_retrieve(node) as conn:
            assert conn.echo().category is StatusCategory.SUCCESS
        # The first keeps its association (and the node's only permit), idle.
        started = time.monotonic()
        with second.query_retrieve(node) as conn:
            assert conn.echo().category is StatusCategory.SUCCESS
        # Well within the wait for a permit (2 s), not after the idle timeout (20 s).
        assert time.monotonic() - started < 2.0
        assert pacs.behaviour.stats.peak_associations == 1
    finally:
        first.close()
        second.close()
        pacs.stop()
