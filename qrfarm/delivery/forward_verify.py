"""Proof of arrival for a forward: what the destination confirms of what was sent.

The same two ways as a move to another node (qrfarm.delivery.verification):
Storage Commitment where the destination's profile does not say it fails
(reached by DIMSE), otherwise a C-FIND at the destination (or what the
transport's own verifier does: QIDO-RS for STOW-RS). Instances are asked for
by the UIDs they were sent under (another set when pseudonymised) and
recorded confirmed under the UIDs the farm holds them by, one row each in
``delivered_instances``, so that a later attempt sends only the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from qrfarm.dicom import Node
from qrfarm.dicom.commitment import InstanceRef
from qrfarm.jobs.worker_deps import RunnerDeps
from qrfarm.models import DeliveredInstance, ExpectedInstance, ForwardedInstance, VerifiedBy

from .asking import committed_at
from .verification import DeliveryVerifier

log = logging.getLogger(__name__)

# (study, series, SOP Instance UID) as the destination got them -> those it holds.
# (deps, the destination node's id, its address, the sent (study, series, SOP) UIDs)
# -> the sent SOP Instance UIDs it holds.
Verifier = Callable[[RunnerDeps, int, Node, list[tuple[str, str, str]]], set[str]]


@dataclass(frozen=True)
class Pending:
    """An instance sent and not confirmed yet."""

    held_uid: str
    sop_class_uid: str
    study: str
    series: str
    sent_uid: str


def confirmed_held(session: Session, job_id: int) -> set[str]:
    return set(
        session.scalars(
            select(DeliveredInstance.sop_instance_uid).where(DeliveredInstance.job_id == job_id)
        )
    )


def pending(session: Session, job_id: int) -> list[Pending]:
    """What was sent (in this attempt or an earlier one) and is not confirmed."""
    done = confirmed_held(session, job_id)
    rows = session.execute(
        select(
            ForwardedInstance.sop_instance_uid,
            ExpectedInstance.sop_class_uid,
            ForwardedInstance.sent_study_instance_uid,
            ForwardedInstance.sent_series_instance_uid,
            ForwardedInstance.sent_sop_instance_uid,
        )
        .join(
            ExpectedInstance,
            (ExpectedInstance.job_id == ForwardedInstance.job_id)
            & (ExpectedInstance.sop_instance_uid == ForwardedInstance.sop_instance_uid),
        )
        .where(ForwardedInstance.job_id == job_id, ForwardedInstance.sent_at.is_not(None))
    ).all()
    return [
        Pending(held, sop_class or "", study or "", series or "", sent)
        for held, sop_class, study, series, sent in rows
        if held not in done
    ]


def confirm(
    deps: RunnerDeps,
    verify: Verifier,
    *,
    job_id: int,
    node_id: int,
    node: Node,
    transport: str,
    items: list[Pending],
) -> tuple[VerifiedBy, set[str]]:
    """Ask the destination about ``items``; how, and the held UIDs it confirmed."""
    by_sent = {p.sent_uid: p.held_uid for p in items}
    committed = _by_commitment(deps, job_id, node_id, node, transport, items)
    if committed is not None:
        return VerifiedBy.COMMITMENT, {by_sent[uid] for uid in committed if uid in by_sent}
    found = verify(deps, node_id, node, [(p.study, p.series, p.sent_uid) for p in items])
    method = VerifiedBy.QIDO if transport == "dicomweb" else VerifiedBy.FIND
    return method, {by_sent[uid] for uid in found if uid in by_sent}


def _by_commitment(
    deps: RunnerDeps, job_id: int, node_id: int, node: Node, transport: str, items: list[Pending]
) -> set[str] | None:
    """The sent UIDs the destination commits to; None when it cannot say."""
    verifier = deps.verify_delivery
    if transport != "dimse" or not isinstance(verifier, DeliveryVerifier):
        return None
    if any(not p.sop_class_uid for p in items):
        return None  # an instance of unknown class cannot be named in a request
    return committed_at(
        deps,
        verifier.commitment,
        job_id=job_id,
        node_id=node_id,
        node=node,
        refs=[InstanceRef(p.sop_class_uid, p.sent_uid) for p in items],
    )
