"""What each PACS is like, learned from what it does, and used by the farm.

Traits are counted as seen and not seen, once per job: whether the node
sends the Move Originator on its C-STOREs, answers a C-MOVE before its
C-STOREs are done, sends pending responses, leaves the counts out of a final
response, supports C-GET; and at how many simultaneous associations it
refused one. The farm reads it back: a longer reconciliation grace for a node
that answers before storing, and C-GET or C-MOVE for a job that allows either.

A limit learned from refusals is not kept for good: one refusal may be
transient (the PACS busy with others, restarting). After each quiet period
without a refusal the node is allowed one association more; a refusal at the
new number brings it back down and starts the quiet period again.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from qrfarm.models import NodeProfile, NodeRecord, utcnow
from qrfarm.models.session import insert_for

SENDS_MOVE_ORIGINATOR = "sends_move_originator"
ANSWERS_BEFORE_STORING = "answers_before_storing"
SENDS_PENDING = "sends_pending"
OMITS_COUNTS = "omits_counts"
SUPPORTS_GET = "supports_get"
# Fills in Issuer of Patient ID in its C-FIND answers (so it can match on it).
ANSWERS_ISSUER = "answers_issuer_of_patient_id"
TRAITS = (
    SENDS_MOVE_ORIGINATOR,
    ANSWERS_BEFORE_STORING,
    SENDS_PENDING,
    OMITS_COUNTS,
    SUPPORTS_GET,
    ANSWERS_ISSUER,
)
# As a destination (qrfarm.delivery): whether a Storage Commitment report it
# sends reaches the farm, and whether it answers IMAGE-level C-FINDs.
SUPPORTS_COMMITMENT = "supports_storage_commitment"
ANSWERS_IMAGE_FIND = "answers_image_find"
DESTINATION_TRAITS = (SUPPORTS_COMMITMENT, ANSWERS_IMAGE_FIND)
# Kept beside the traits in ``observations`` (no column of its own):
# {"at_ms": when the node last refused an association, epoch milliseconds}.
LAST_REFUSAL = "association_refusal"
# The quiet period after which a learned limit rises by one (the setting
# QRFARM_ASSOCIATION_PROBE_AFTER_S; this is its default).
PROBE_AFTER_S = 600.0


def _row(session: Session, node_id: int) -> NodeProfile:
    """The node's profile row, locked; made first if need be (by whoever is first)."""
    session.execute(
        insert_for(session, NodeProfile)
        .values(node_id=node_id, observations={}, max_associations_held=0, updated_at=utcnow())
        .on_conflict_do_nothing(index_elements=["node_id"])
    )
    return session.get_one(NodeProfile, node_id, with_for_update=True, populate_existing=True)


def observe(
    session: Session, node_id: int, trait: str, seen: bool, *, now: float | None = None
) -> None:
    """Count one observation of ``trait`` (seen or not) for the node, and keep
    the latest with its time (epoch milliseconds)."""
    assert trait in TRAITS or trait in DESTINATION_TRAITS, trait
    row = _row(session, node_id)
    counts = dict(row.observations.get(trait, {"yes": 0, "no": 0}))
    counts["yes" if seen else "no"] += 1
    counts["last"] = int(seen)
    counts["at_ms"] = int((time.time() if now is None else now) * 1000)
    # A new dict: the JSON column notices a changed value, not a mutated one.
    row.observations = {**row.observations, trait: counts}


def observe_associations(
    session: Session,
    node_id: int,
    *,
    held: int | None = None,
    rejected_at: int | None = None,
    probe_after_s: float = PROBE_AFTER_S,
    now: float | None = None,
) -> None:
    """Count the associations held at once, or a refusal at ``rejected_at`` of them."""
    row = _row(session, node_id)
    if held is not None and held > row.max_associations_held:
        row.max_associations_held = held
    if rejected_at is not None:
        now = time.time() if now is None else now
        learned = refused_at(row, probe_after_s, now)
        row.rejected_at_associations = rejected_at if learned is None else min(learned, rejected_at)
        row.observations = {**row.observations, LAST_REFUSAL: {"at_ms": int(now * 1000)}}


def refused_at(row: NodeProfile | None, probe_after_s: float, now: float) -> int | None:
    """How many associations the node is taken to refuse at, now: the number it
    refused at, one higher for each quiet period since that refusal; None
    when it never refused one."""
    if row is None or row.rejected_at_associations is None:
        return None
    last = row.observations.get(LAST_REFUSAL, {}).get("at_ms")
    if last is None:
        return None  # learned before refusals were timed: tried afresh
    quiet_periods = max(0.0, now - last / 1000) // probe_after_s
    return row.rejected_at_associations + int(quiet_periods)


def limit_below(rejected_at: int) -> int:
    """The associations a node refused at ``rejected_at`` is taken to accept:
    one fewer, and never none (a node that refuses the farm's only one is
    busy elsewhere, or not done with the last one yet; the farm keeps to one)."""
    return max(rejected_at - 1, 1)


def node_id_of(session: Session, ae_title: str, host: str, port: int) -> int | None:
    return session.scalar(
        select(NodeRecord.id).where(
            NodeRecord.ae_title == ae_title, NodeRecord.host == host, NodeRecord.port == port
        )
    )


def verdict(counts: dict[str, int] | None, name: str = "") -> bool | None:
    """What the node does, by most of what was seen (a destination's trait:
    by the latest, as its settings may change); None before anything was."""
    if not counts or counts.get("yes", 0) + counts.get("no", 0) == 0:
        return None
    if name in DESTINATION_TRAITS and "last" in counts:
        return bool(counts["last"])
    return counts.get("yes", 0) >= counts.get("no", 0)


def trait(session: Session, node_id: int, name: str) -> bool | None:
    row = session.get(NodeProfile, node_id)
    return None if row is None else verdict(row.observations.get(name), name)


def worth_asking(
    session: Session, node_id: int, name: str, recheck_after_s: float, now: float | None = None
) -> bool:
    """Whether to try what a destination may do (Storage Commitment): yes,
    unless it was last seen not to, less than ``recheck_after_s`` ago (it may
    have been switched on since)."""
    row = session.get(NodeProfile, node_id)
    counts = None if row is None else row.observations.get(name)
    if verdict(counts, name) is not False:
        return True
    assert counts is not None
    seen_at_ms = counts.get("at_ms", 0)  # none kept (older rows): long ago
    return (time.time() if now is None else now) * 1000 - seen_at_ms >= recheck_after_s * 1000


def profile(session: Session, node_id: int, probe_after_s: float = PROBE_AFTER_S) -> dict[str, Any]:
    """The profile as shown by `qrfarm node show` and the API."""
    row = session.get(NodeProfile, node_id)
    observations = {} if row is None else row.observations
    rejected_at = refused_at(row, probe_after_s, time.time())
    return {
        **{name: verdict(observations.get(name), name) for name in TRAITS + DESTINATION_TRAITS},
        "rejects_above_associations": None if rejected_at is None else limit_below(rejected_at),
        "max_associations_held": 0 if row is None else row.max_associations_held,
        "observations": {
            name: observations[name] for name in TRAITS + DESTINATION_TRAITS if name in observations
        },
    }
