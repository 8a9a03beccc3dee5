"""Orphans a job asks for: claimed by it, so that what is held is not fetched again.

An instance that matched no move when it arrived (a PACS that stores after
the late window, or before the move that wants it was sent) is an orphan.
When a move of the same PACS later asks for it, the job claims it: a row of
its own pointing to the orphan's file, matched ``late``. Only orphans sent by
the job's own node (its AE titles) are claimed, and only those inside what
the job asked for (:mod:`qrfarm.jobs.scope`), and only those received since
the late window before the job was made.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from qrfarm.models import (
    ExpectedInstance,
    Job,
    JobKind,
    MatchedBy,
    NodeRecord,
    OrphanInstance,
    ReceivedInstance,
    table,
)
from qrfarm.models.session import insert_for

from .scope import InstanceKeys, outside_move

log = logging.getLogger(__name__)

_STUDY_TAG = "0020000D"
# Copied from the orphan's row to the job's.
_COPIED = (
    "sop_instance_uid",
    "sop_class_uid",
    "study_instance_uid",
    "series_instance_uid",
    "transfer_syntax",
    "size",
    "file_path",
    "calling_ae",
    "called_ae",
    "peer_host",
    "move_originator_ae",
    "move_originator_message_id",
    "received_at",
    "repeat_count",
    "repeat_differs",
)


def _study_uids(identifier: dict[str, Any]) -> list[str]:
    element = identifier.get(_STUDY_TAG) or {}
    return [str(v) for v in element.get("Value", []) if v]


def claim_orphans(session: Session, job: Job, late_window_s: float) -> int:
    """Give ``job`` the orphans of its node that it asked for, received since the
    late window before the job was made; how many rows were added. The job's
    recorded count is brought up to its rows."""
    if job.kind is not JobKind.MOVE:
        return 0
    node = session.get(NodeRecord, job.node_id)
    if node is None:
        return 0
    ae_titles = sorted({node.ae_title, *(node.store_ae_titles or [])})
    expected: set[str] | None = None
    if job.expected_count:
        expected = set(
            session.scalars(
                select(ExpectedInstance.sop_instance_uid).where(ExpectedInstance.job_id == job.id)
            )
        )
    studies = _study_uids(job.identifier)
    if not studies and not expected:
        return 0
    held = select(ReceivedInstance.sop_instance_uid).where(ReceivedInstance.job_id == job.id)
    # An orphan older than that is not what this move brought: a push long ago
    # must not stand in for an instance the move did not deliver.
    since = job.created_at - dt.timedelta(seconds=late_window_s)
    candidates = session.scalars(
        select(OrphanInstance)
        .where(
            OrphanInstance.calling_ae.in_(ae_titles),
            OrphanInstance.received_at >= since,
            or_(
                OrphanInstance.study_instance_uid.in_(studies),
                select(ExpectedInstance.sop_instance_uid)
                .where(
                    ExpectedInstance.job_id == job.id,
                    ExpectedInstance.sop_instance_uid == OrphanInstance.sop_instance_uid,
                )
                .exists(),
            ),
            OrphanInstance.sop_instance_uid.not_in(held),
        )
        .order_by(OrphanInstance.received_at, OrphanInstance.id)
    ).all()
    rows: dict[str, dict[str, Any]] = {}
    for orphan in candidates:
        keys = InstanceKeys(
            patient_id=None,
            study_instance_uid=orphan.study_instance_uid,
            series_instance_uid=orphan.series_instance_uid,
            sop_instance_uid=orphan.sop_instance_uid,
        )
        named = expected is not None and orphan.sop_instance_uid in expected
        if not named and outside_move(job.level, job.identifier, expected, keys) is not None:
            continue
        orphan.matched_job_id = job.id
        first = rows.get(orphan.sop_instance_uid)
        if first is not None:
            # The node sent this UID twice (from two of its AE titles): the
            # first copy counts, flagged if the other's bytes differ.
            first["repeat_differs"] |= orphan.file_path != first["file_path"]
            continue
        rows[orphan.sop_instance_uid] = {name: getattr(orphan, name) for name in _COPIED} | {
            "job_id": job.id,
            "matched_by": MatchedBy.LATE,
        }
    if rows:
        session.execute(
            insert_for(session, table(ReceivedInstance)).on_conflict_do_nothing(
                index_elements=["job_id", "sop_instance_uid"]
            ),
            list(rows.values()),
        )
        log.info("job %d: %d instance(s) held as orphans claimed", job.id, len(rows))
    job.recorded_count = (
        session.scalar(select(func.count()).where(ReceivedInstance.job_id == job.id)) or 0
    )
    return len(rows)
