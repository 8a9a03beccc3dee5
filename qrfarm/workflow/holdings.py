"""Is a prior there already? What the farm holds of a study, or what a
destination confirmed of an earlier move of it: a prefetch moves only what
is not (qrfarm.workflow.prefetch)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from qrfarm.dicom import Level
from qrfarm.models import DeliveredInstance, Job, JobKind, JobState, ReceivedInstance

from . import priors


def held_instances(session: Session, study_uid: str) -> int:
    return (
        session.scalar(
            select(func.count(func.distinct(ReceivedInstance.sop_instance_uid))).where(
                ReceivedInstance.study_instance_uid == study_uid
            )
        )
        or 0
    )


def delivered_before(session: Session, study_uid: str, destination_node_id: int) -> bool:
    """A whole-study move of it to that destination ended with every instance confirmed there."""
    moves = session.scalars(
        select(Job.identifier).where(
            Job.kind == JobKind.MOVE,
            Job.level == Level.STUDY.value,
            Job.state == JobState.COMPLETED,
            Job.destination_node_id == destination_node_id,
            Job.id.in_(select(DeliveredInstance.job_id)),
        )
    )
    return any(priors.every(ident, priors.STUDY_UID) == [study_uid] for ident in moves)


def already_held(
    session: Session, study: dict[str, Any], destination_node_id: int | None = None
) -> bool:
    """Fully held: as many instances as the PACS says the study has, or, where
    it does not say, a whole-study retrieve of it that ended reconciled. For a
    destination other than the farm: a move of it there that ended confirmed
    (what the farm holds says nothing of what the destination holds)."""
    if destination_node_id is not None:
        study["held_before"] = 0
        return delivered_before(session, study["study_instance_uid"], destination_node_id)
    held = held_instances(session, study["study_instance_uid"])
    study["held_before"] = held
    if study["instances"]:
        return held >= int(study["instances"])
    if not held:
        return False
    retrieves = session.scalars(
        select(Job.identifier).where(
            Job.kind.in_([JobKind.MOVE, JobKind.GET]),
            Job.level == Level.STUDY.value,
            Job.state == JobState.COMPLETED,
            Job.recorded_count > 0,
        )
    )
    uid = study["study_instance_uid"]
    return any(priors.every(ident, priors.STUDY_UID) == [uid] for ident in retrieves)
