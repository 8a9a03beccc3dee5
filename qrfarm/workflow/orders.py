"""Orders as a hospital sends them: ORC-1 order control over a prefetch's life.

NW (and XO, where the rule says so) starts the prefetch of an order, or
updates it: the same order sent again with the same patient and selection
finds the prefetch under way; changed (an XO with another modality), the old
one is cancelled and a new one started. CA and DC cancel the order's
prefetches under way and their child jobs (a running move gets C-CANCEL from
its worker). Any other code is acknowledged and ignored.

A rule's conditions (``Rule.when``) decide whether an order starts anything,
and its ``modality_from`` / ``body_part_from`` take the prior selection from
the order itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.errors import InvalidRule
from qrfarm.jobs import control
from qrfarm.jobs.dispatch import Dispatcher
from qrfarm.jobs.submit import SubmitRules
from qrfarm.models import ENDED_STATES, Job, Prefetch, PrefetchState, utcnow
from qrfarm.notify.outbox import notify_prefetch_ended

from . import patient_finds, prefetch
from .conditions import Lookup, first_failed, value_of
from .identity import PatientIdentifier
from .prefetch_summary import prefetch_summary
from .rules import Rule

CANCELLING = frozenset({"CA", "DC"})


@dataclass(frozen=True)
class Outcome:
    """What an order message did: the prefetch it started or found, the ones it
    cancelled, or why it did nothing (acknowledged all the same)."""

    prefetch_id: int | None = None
    cancelled: tuple[int, ...] = ()
    ignored: str | None = None
    replaced: int | None = None

    def text(self) -> str:
        if self.ignored:
            return self.ignored
        if self.prefetch_id is not None:
            # The same for the message sent again: an ACK lost and resent reads alike.
            return f"prefetch {self.prefetch_id}"
        if self.cancelled:
            return "cancelled prefetch " + ", ".join(map(str, self.cancelled))
        return "no prefetch under way for this order"


def selection(rule: Rule, lookup: Lookup) -> Rule:
    """The rule with the order's own values for prior selection (the ordered
    modality, the body part) where it takes them; InvalidRule for a value that
    is not one (a modality code is checked like the rule's own)."""
    update: dict[str, list[str]] = {}
    if rule.modality_from and (modality := value_of(rule.modality_from, lookup)):
        update["modalities"] = [modality]
    if rule.body_part_from and (body_part := value_of(rule.body_part_from, lookup)):
        update["body_parts"] = [body_part]
    if not update:
        return rule
    try:
        return Rule.model_validate({**rule.model_dump(), **update})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidRule(f"the order's value for prior selection is refused: {problems}") from exc


def skipped_by(rule: Rule, lookup: Lookup) -> str | None:
    """Why the rule's conditions keep this order from starting a prefetch."""
    failed = first_failed(rule.when, lookup)
    return None if failed is None else f"not prefetched: the rule wants {failed.describe()}"


def bound_order_key(sender_address: str | None, order_key: str) -> str:
    """An order's key bound to the address it came from: MSH-3 and MSH-4 are
    whatever a sender writes, so another sender that may reach the listener
    could otherwise cancel or replace this sender's orders by naming them.
    (Behind a balancer that hides addresses, every sender shares one.)"""
    return f"{sender_address or '-'}|{order_key}"[:255]


def _of_patient(row: Prefetch, identifiers: Sequence[PatientIdentifier]) -> bool:
    """Whether the prefetch is of the patient the message names: an identifier
    in common under the same authority (none on both sides counts as the
    same). An ID without its authority may be another patient's: an order
    number sent again for another patient is a sender's error that touches
    nothing."""
    for held in patient_finds.identifiers_of(row):
        for given in identifiers:
            if held.id == given.id and held.issuer == given.issuer:
                return True
    return False


def _under_way(
    session: Session,
    order_key: str,
    identifiers: Sequence[PatientIdentifier],
    lock: bool = False,
) -> list[Prefetch]:
    query = (
        select(Prefetch)
        .where(Prefetch.order_key == order_key, Prefetch.state.in_(prefetch.UNDER_WAY))
        .order_by(Prefetch.id)
    )
    if lock:
        query = query.with_for_update()
    return [row for row in session.scalars(query) if _of_patient(row, identifiers)]


def _same(row: Prefetch, request: prefetch.PrefetchRequest) -> bool:
    identifiers = [i.model_dump() for i in request.identifiers]
    return (
        row.rule == request.rule.model_dump()
        and (not identifiers or row.patient_identifiers == identifiers)
        and row.current_accession == request.current_accession
        and row.current_study_uid == request.current_study_uid
    )


def _cancel_rows(session: Session, rows: list[Prefetch], reason: str) -> list[int]:
    """End the prefetches cancelled; the ids of their child jobs not yet ended."""
    jobs: list[int] = []
    for row in rows:
        row.state = PrefetchState.CANCELLED
        row.error = reason
        row.ended_at = utcnow()
        session.flush()
        notify_prefetch_ended(session, row, prefetch_summary(session, row.id))
        jobs += session.scalars(
            select(Job.id).where(Job.prefetch_id == row.id, Job.state.not_in(ENDED_STATES))
        )
    return jobs


def cancel_order(
    sessions: sessionmaker[Session],
    order_key: str,
    identifiers: Sequence[PatientIdentifier],
    reason: str,
) -> tuple[int, ...]:
    """Cancel the order's prefetches under way for this patient, and their jobs; their ids."""
    with sessions() as session, session.begin():
        rows = _under_way(session, order_key, identifiers, lock=True)
        job_ids = _cancel_rows(session, rows, reason)
        cancelled = tuple(row.id for row in rows)
    # Each job in its own transaction: a queued one ends now, a running one is
    # asked to stop (its worker sends C-CANCEL and ends it cancelled).
    for job_id in job_ids:
        control.cancel(sessions, job_id)
    return cancelled


def start_or_update(
    sessions: sessionmaker[Session],
    request: prefetch.PrefetchRequest,
    dispatcher: Dispatcher,
    rules: SubmitRules,
) -> Outcome:
    """NW or XO: the order's prefetch under way if unchanged, else a new one
    (the old one, if any, cancelled as replaced)."""
    replaced: int | None = None
    if request.order_key:
        identifiers = request.identifiers or (PatientIdentifier(id=request.patient_id),)
        with sessions() as session:
            current = _under_way(session, request.order_key, identifiers)
            unchanged = [row.id for row in current if _same(row, request)]
        if unchanged:
            return Outcome(prefetch_id=unchanged[-1])
        if current:
            cancelled = cancel_order(
                sessions, request.order_key, identifiers, "replaced by a changed order"
            )
            replaced = cancelled[-1] if cancelled else None
    prefetch_id = prefetch.start(sessions, request, dispatcher, rules)
    return Outcome(prefetch_id=prefetch_id, replaced=replaced)
