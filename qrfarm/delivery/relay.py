"""The second leg of a move relayed through the farm (qrfarm.jobs.relay): once
the move into the farm has ended completed or partial, a forward job sends
what it holds on to the destination; one that holds nothing ends its relay
with no forward (its own end says why). Run by the scheduler each round: a relay whose move
ended while no scheduler ran is picked up by the next one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.errors import NotForwardable, QrfarmError
from qrfarm.jobs.dispatch import Dispatcher, send_run_jobs
from qrfarm.models import FarmRelay, Job, NodeRecord

from .forward import FORWARDABLE_STATES, ForwardRequest, new_forward

log = logging.getLogger(__name__)


def advance_all(
    sessions: sessionmaker[Session],
    dispatcher: Dispatcher,
    check_target: Callable[[str], None] | None = None,
    max_attempts: int = 5,
) -> list[int]:
    """Start the forward of every relayed move that has ended; the forwards' ids."""
    started: list[tuple[int, str]] = []
    with sessions() as session, session.begin():
        rows = session.execute(
            select(FarmRelay, Job, NodeRecord)
            .join(Job, Job.id == FarmRelay.move_job_id)
            .join(NodeRecord, NodeRecord.id == FarmRelay.destination_node_id)
            # A failed move may yet be retried: only one that brought
            # instances in goes on (a cancelled one stays as it is).
            .where(FarmRelay.forward_job_id.is_(None), Job.state.in_(list(FORWARDABLE_STATES)))
            .with_for_update(of=FarmRelay, skip_locked=True)
        ).all()
        for relay, move, node in rows:
            forward = _start(session, relay, move, node, check_target, max_attempts)
            if forward is not None:
                started.append((forward, node.name))
    if started:
        send_run_jobs(sessions, dispatcher, started)
    return [job_id for job_id, _ in started]


def _start(
    session: Session,
    relay: FarmRelay,
    move: Job,
    node: NodeRecord,
    check_target: Callable[[str], None] | None,
    max_attempts: int,
) -> int | None:
    try:
        with session.begin_nested():
            forward = new_forward(
                session,
                ForwardRequest(
                    source_job_id=move.id,
                    destination=node.name,
                    priority=move.priority,
                    callback_url=move.callback_url,
                    max_attempts=max_attempts,
                ),
                check_target,
            )
    except (NotForwardable, QrfarmError) as exc:
        # Nothing to send on (it brought nothing), or the destination cannot
        # be one any more: the relay is over, said in the log.
        log.info("relay of job %d to %s ends without a forward: %s", move.id, node.name, exc)
        session.delete(relay)
        return None
    relay.forward_job_id = forward.id
    return forward.id
