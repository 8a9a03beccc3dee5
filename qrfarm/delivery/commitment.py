"""Storage Commitment with a destination: ask it to commit to what a job sent
there, and take its report wherever the report comes.

A request is recorded (its Transaction UID, the job, the destination's AE
title) and committed before the N-ACTION goes out, so that a report on a new
association, taken by the farm's storage SCP (:func:`handle_report`), finds
it at once. The N-ACTION is sent with the storage SCP's AE title as calling
AE title: a destination that opens a new association for its report (Orthanc
always does, to the address its DicomModalities give for that AE title)
reaches the SCP, the address it already uses for moves to the farm. A report
sent on the same association is taken by the requesting association itself,
which stays open a moment for it. Either way the report is a row; the
requester reads it back from the database.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.dicom import Connection, Node, Status, Timeouts
from qrfarm.dicom.commitment import (
    REQUEST_STORAGE_COMMITMENT,
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH,
    CommitmentReport,
    InstanceRef,
    commitment_request,
    new_transaction_uid,
    parse_report,
    requestor_contexts,
)
from qrfarm.errors import (
    AssociationRejected,
    CommitmentUnavailable,
    DicomTimeout,
    PeerUnreachable,
    QrfarmError,
)
from qrfarm.jobs.announce import announce, can_listen, wait_for_notice
from qrfarm.models import CommitmentRequest, utcnow

log = logging.getLogger(__name__)

# How often a requester looks for its report in the database (SQLite; a
# PostgreSQL farm hears of it on this channel, payload the Transaction UID).
POLL_S = 0.05
REPORTED_CHANNEL = "qrfarm_commitment_reported"


@dataclass(frozen=True)
class CommitmentSettings:
    """How the farm asks for Storage Commitment."""

    # The calling AE title of the request: the storage SCP's, where a
    # destination sends a report on a new association.
    calling_ae: str
    # How long to wait for the report after the destination accepted the request.
    report_timeout_s: float = 30.0
    # How long the requesting association stays open for a report on it.
    same_association_wait_s: float = 1.0
    # A destination last seen not to commit is asked again after this long.
    recheck_after_s: float = 86_400.0
    timeouts: Timeouts = field(default_factory=Timeouts)


def record_report(
    session: Session,
    calling_ae: str,
    report: CommitmentReport,
    node_ids: Collection[int] | None = None,
) -> int:
    """Record a destination's report on its request; the status to answer it with.

    Only the destination asked may report on a transaction: its AE title is
    the report's calling AE title and, on an association of its own, it is
    among ``node_ids``, the nodes that AE title and the peer's address name
    (two nodes may share an AE title). No other peer can confirm, or deny,
    what a job delivered. A repeated report keeps the first.
    """
    row = session.get(CommitmentRequest, report.transaction_uid, with_for_update=True)
    if row is None:
        log.warning("storage commitment report from %s for no request of the farm", calling_ae)
        return Status.INVALID_ARGUMENT_VALUE
    if node_ids is not None and row.node_id not in node_ids:
        log.warning(
            "storage commitment report for job %d refused: it came from another node "
            "than the one asked (%s, from hosts of node(s) %s)",
            row.job_id,
            calling_ae,
            sorted(node_ids),
        )
        return Status.INVALID_ARGUMENT_VALUE
    if calling_ae.strip() != row.node_ae_title:
        log.warning(
            "storage commitment report for job %d refused: it came from %s, the request went to %s",
            row.job_id,
            calling_ae,
            row.node_ae_title,
        )
        return Status.INVALID_ARGUMENT_VALUE
    if row.reported_at is None:
        row.committed_uids = list(report.committed)
        row.failed_uids = dict(report.failed)
        row.reported_at = utcnow()
        announce(session, REPORTED_CHANNEL, report.transaction_uid)
        log.info(
            "job %d: storage commitment report, %d committed, %d failed",
            row.job_id,
            len(report.committed),
            len(report.failed),
        )
    return Status.SUCCESS


def handle_report(
    sessions: sessionmaker[Session],
    calling_ae: str,
    event_type: int | None,
    info: Dataset | None,
    node_ids: Collection[int] | None = None,
) -> int:
    """An N-EVENT-REPORT from ``calling_ae`` (and one of ``node_ids``), on
    whichever association it came; the status to answer (the storage SCP
    and the requesting association call it)."""
    try:
        report = parse_report(event_type, info)
    except (ValueError, AttributeError, TypeError) as exc:
        log.warning("storage commitment report from %s refused: %s", calling_ae, exc)
        return (
            Status.NO_SUCH_EVENT_TYPE if "event type" in str(exc) else Status.INVALID_ARGUMENT_VALUE
        )
    try:
        with sessions() as session, session.begin():
            return record_report(session, calling_ae, report, node_ids)
    except SQLAlchemyError:
        log.warning("storage commitment report not recorded (database)", exc_info=True)
        return Status.PROCESSING_FAILURE


def report_of(session: Session, transaction_uid: str) -> CommitmentReport | None:
    """The report on a request, once it came."""
    row = session.get(CommitmentRequest, transaction_uid, populate_existing=True)
    if row is None or row.reported_at is None:
        return None
    return CommitmentReport(transaction_uid, list(row.committed_uids), dict(row.failed_uids))


def request_commitment(
    sessions: sessionmaker[Session],
    settings: CommitmentSettings,
    *,
    job_id: int,
    node_id: int,
    node: Node,
    refs: Sequence[InstanceRef],
    hold: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> CommitmentReport:
    """Ask ``node`` to commit to ``refs`` and wait for its report; the
    association is opened and used within ``hold()`` (one of the node's
    permits, in a worker), the wait for a report on another one after it.

    Raises CommitmentUnavailable when the node refuses the association, the
    context or the request, or no report comes within the settings' time
    (NodeBusy from ``hold``: none of the node's associations is free).
    """
    transaction_uid = new_transaction_uid()
    information = commitment_request(transaction_uid, refs)
    with hold():  # no request recorded while the node has no association free
        with sessions() as session, session.begin():
            session.add(
                CommitmentRequest(
                    transaction_uid=transaction_uid,
                    job_id=job_id,
                    node_id=node_id,
                    node_ae_title=node.ae_title,
                    requested_count=len(refs),
                    committed_uids=[],
                    failed_uids={},
                )
            )
        _request(sessions, settings, node, [node_id], transaction_uid, information)
    report = _wait(sessions, transaction_uid, settings.report_timeout_s)
    if report is None:
        raise CommitmentUnavailable(
            f"{node} accepted the storage commitment request and sent no report within "
            f"{settings.report_timeout_s:g} s (does it know the farm's storage SCP "
            f"{settings.calling_ae} and its address?)"
        )
    return report


def _request(
    sessions: sessionmaker[Session],
    settings: CommitmentSettings,
    node: Node,
    node_ids: list[int],
    transaction_uid: str,
    information: Dataset,
) -> None:
    """The N-ACTION on an association of its own, open a moment for a report on it."""
    try:
        conn = Connection.open(
            node, requestor_contexts(), calling_ae=settings.calling_ae, timeouts=settings.timeouts
        )
    except QrfarmError as exc:
        # Unreachable or silent says nothing of Storage Commitment; refusing
        # an association that proposes only it says it does not do it.
        raise CommitmentUnavailable(
            f"{node}: no storage commitment association ({exc})",
            unsupported=not (
                isinstance(exc, PeerUnreachable | DicomTimeout)
                or (isinstance(exc, AssociationRejected) and exc.retriable)
            ),
        ) from exc
    try:
        conn.on_event_report(
            lambda event_type, info: handle_report(
                sessions, node.ae_title, event_type, info, node_ids
            )
        )
        try:
            status = conn.action(
                information,
                REQUEST_STORAGE_COMMITMENT,
                STORAGE_COMMITMENT_PUSH,
                STORAGE_COMMITMENT_INSTANCE,
            )
        except QrfarmError as exc:
            raise CommitmentUnavailable(
                f"{node}: storage commitment not requested ({exc})"
            ) from exc
        if status != Status.SUCCESS:
            raise CommitmentUnavailable(
                f"{node} refused the storage commitment request (status 0x{status:04X})"
            )
        _wait(sessions, transaction_uid, settings.same_association_wait_s)
    finally:
        with suppress(QrfarmError):
            conn.close()


def _wait(
    sessions: sessionmaker[Session], transaction_uid: str, timeout_s: float
) -> CommitmentReport | None:
    """The report once recorded, within ``timeout_s``: heard the moment it
    commits on PostgreSQL (LISTEN/NOTIFY), looked for every POLL_S elsewhere."""
    deadline = time.monotonic() + timeout_s
    engine: Engine = sessions.kw["bind"]
    if can_listen(engine):
        wait_for_notice(
            engine,
            REPORTED_CHANNEL,
            transaction_uid,
            select(CommitmentRequest.reported_at).where(
                CommitmentRequest.transaction_uid == transaction_uid
            ),
            lambda reported_at: reported_at is not None,
            deadline,
        )
    while True:
        with sessions() as session:
            report = report_of(session, transaction_uid)
        if report is not None or time.monotonic() >= deadline:
            return report
        time.sleep(POLL_S)


def requests_of(session: Session, job_id: int) -> list[CommitmentRequest]:
    """The job's storage commitment requests, oldest first."""
    return list(
        session.scalars(
            select(CommitmentRequest)
            .where(CommitmentRequest.job_id == job_id)
            .order_by(CommitmentRequest.requested_at)
        )
    )
