"""Telling waiters that a job ended, the moment its ending commits (PostgreSQL).

A job's end is announced with ``pg_notify`` inside the transaction that ends
it: PostgreSQL delivers the notification only if, and as soon as, that
transaction commits, so a waiter that listens never hears of an end that was
rolled back and never misses one that was not (it checks the state once after
it starts listening). On SQLite there is no such channel: waiters poll.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import closing, suppress
from typing import Any

from sqlalchemy import Engine, Select, func, select
from sqlalchemy.orm import Session

from qrfarm.models import ENDED_STATES, Job

JOB_ENDED_CHANNEL = "qrfarm_job_ended"


def announce_ended(session: Session, job_id: int) -> None:
    """Queue the notification of ``job_id``'s end; it goes out on commit."""
    announce(session, JOB_ENDED_CHANNEL, str(job_id))


def announce(session: Session, channel: str, payload: str) -> None:
    """Queue a notification on ``channel``; it goes out when ``session``'s
    transaction commits (PostgreSQL; elsewhere waiters poll)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_notify(channel, payload)))


def can_listen(engine: Engine) -> bool:
    """Whether waiters can listen (PostgreSQL through psycopg 3) rather than poll."""
    return engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"


def wait_for_end(
    engine: Engine, job_id: int, deadline: float | None, recheck_s: float = 1.0
) -> bool:
    """Block until the job has ended or the deadline (monotonic) passed; whether it ended."""
    return wait_for_notice(
        engine,
        JOB_ENDED_CHANNEL,
        str(job_id),
        select(Job.state).where(Job.id == job_id),
        lambda state: state in ENDED_STATES,
        deadline,
        recheck_s,
    )


def wait_for_notice(
    engine: Engine,
    channel: str,
    wanted: str,
    query: Select[Any],
    done: Callable[[Any], bool],
    deadline: float | None,
    recheck_s: float = 1.0,
) -> bool:
    """Block until the first value of ``query``'s row is ``done`` or the
    deadline (monotonic) passed; whether it is done.

    Listens on ``channel`` on one pooled connection, and runs ``query`` on
    that same connection (no pool checkout, no transaction) once listening
    and every ``recheck_s`` after; a notification whose payload is
    ``wanted`` is taken at its word. A listening connection that breaks
    falls back to the rechecks on a fresh one.
    """
    import psycopg

    compiled = query.compile(dialect=engine.dialect)
    sql, parameters = str(compiled), compiled.params

    def is_done(connection: Any) -> bool:
        row = connection.execute(sql, parameters).fetchone()
        return row is not None and done(row[0])

    raw = engine.raw_connection()
    listener: Any = raw.driver_connection
    try:
        try:
            listener.autocommit = True
            listener.execute(f"LISTEN {channel}")
            # After LISTEN: what was committed before it is seen here.
            while not is_done(listener):
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return False
                wait_s = recheck_s if deadline is None else min(recheck_s, deadline - now)
                # closing(): the generator holds the connection's lock until it ends.
                with closing(listener.notifies(timeout=wait_s)) as notifications:
                    if any(n.payload == wanted for n in notifications):
                        return True
            return True
        except psycopg.Error:
            # The connection broke: poll on a fresh one for the rest.
            raw.invalidate()
            return _poll_fresh(engine, is_done, deadline, recheck_s)
    finally:
        if raw.is_valid:
            with suppress(psycopg.Error):
                listener.execute(f"UNLISTEN {channel}")
                listener.autocommit = False
        raw.close()


def _poll_fresh(
    engine: Engine, has_ended: Callable[[Any], bool], deadline: float | None, every_s: float
) -> bool:
    while True:
        with engine.connect() as connection:
            ended = has_ended(connection.connection.driver_connection)
            connection.rollback()
        if ended:
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(every_s)
