"""Advancing parents of child jobs (prefetches, retrievals) from the scheduler.

Each parent under way is advanced in a savepoint of one transaction over the
rows locked with SKIP LOCKED (another scheduler takes the others); the jobs
the steps made are sent once it commits (the sweeper sends any a crash left
unsent).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.errors import PermanentError
from qrfarm.jobs.dispatch import Dispatcher
from qrfarm.jobs.submit import send_jobs

Parent = TypeVar("Parent", bound=Any)


def advance_under_way(
    sessions: sessionmaker[Session],
    dispatcher: Dispatcher,
    model: type[Parent],
    under_way: Sequence[Enum],
    step: Callable[[Session, Parent], list[int]],
    fail: Callable[[Session, Parent, str], None],
) -> list[int]:
    """Advance every ``model`` row whose state is ``under_way`` by ``step`` (the
    ids of the jobs it made); ``fail`` ends one whose step raised a
    PermanentError (a node removed or no longer allowed since it began).
    The ids of the rows that changed state."""
    changed: list[int] = []
    to_send: list[int] = []
    with sessions() as session, session.begin():
        for row in session.scalars(
            select(model)
            .where(model.state.in_(under_way))
            .order_by(model.id)
            .with_for_update(skip_locked=True)
        ):
            before = row.state
            try:
                with session.begin_nested():
                    to_send += step(session, row)
            except PermanentError as exc:
                fail(session, row, str(exc))
            if row.state is not before:
                changed.append(row.id)
    send_jobs(sessions, dispatcher, to_send)
    return changed
