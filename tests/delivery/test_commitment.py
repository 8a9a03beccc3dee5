"""What a failed Storage Commitment request teaches the farm about a destination."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.delivery.commitment import CommitmentSettings, request_commitment
from qrfarm.dicom import Node, Timeouts
from qrfarm.dicom.commitment import InstanceRef
from qrfarm.errors import CommitmentUnavailable
from qrfarm.models import CommitmentRequest, NodeRecord
from qrfarm.sandbox.destination import SandboxDestination
from tests.jobs.conftest import add_job, sessions  # noqa: F401  (a fixture)
from tests.peers.ports import free_port

CT = "1.2.840.10008.5.1.4.1.1.2"
SETTINGS = CommitmentSettings(
    calling_ae="QRFARMSCP", report_timeout_s=1.0, timeouts=Timeouts(connect=2.0, acse=5.0)
)


def _ask(sessions: sessionmaker[Session], node: Node) -> CommitmentUnavailable:  # noqa: F811
    job_id = add_job(sessions)
    with sessions() as session:
        node_id = session.scalar(select(NodeRecord.id).where(NodeRecord.name == "pacs"))
    assert node_id is not None
    with pytest.raises(CommitmentUnavailable) as raised:
        request_commitment(
            sessions,
            SETTINGS,
            job_id=job_id,
            node_id=node_id,
            node=node,
            refs=[InstanceRef(CT, "1.2.826.0.1.3680043.10.1234.9.9")],
        )
    with sessions() as session:
        # The request was recorded before it went out, and nothing reported on it.
        rows = session.scalars(select(CommitmentRequest).where(CommitmentRequest.job_id == job_id))
        assert [r.reported_at for r in rows] == [None]
    return raised.value


def test_a_destination_that_is_down_says_nothing_of_its_commitment(
    sessions: sessionmaker[Session],  # noqa: F811
) -> None:
    error = _ask(sessions, Node("DEST", "127.0.0.1", free_port()))
    assert not error.unsupported


def test_a_destination_that_refuses_the_commitment_association_does_not_commit(
    sessions: sessionmaker[Session],  # noqa: F811
    tmp_path: Path,
) -> None:
    destination = SandboxDestination(tmp_path / "dest", ae_title="DEST")
    port = destination.start()
    try:
        error = _ask(sessions, Node("DEST", "127.0.0.1", port))
    finally:
        destination.stop()
    assert error.unsupported
