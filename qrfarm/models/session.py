"""Engines and sessions: SQLite (the embedded default) and PostgreSQL (the farm).

Nothing is made at import time; an entry point makes the engine, and a
forked process disposes what it inherited (``engine.dispose(close=False)``).

Bound parameters hold patient data (IDs, names, C-FIND answers): every engine
keeps them out of its errors (``hide_parameters``), and a PostgreSQL error
loses its DETAIL line (``Key (patient_id)=(P001) already exists``) from its
message; the driver's ``diag`` still has it for code that asks.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and BEGIN IMMEDIATE."""
    parsed = make_url(url)
    kwargs.setdefault("hide_parameters", True)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs
        )
        _configure_sqlite(engine)
        return _without_values_in_errors(engine)
    kwargs.setdefault("pool_pre_ping", True)
    return _without_values_in_errors(create_engine(url, **kwargs))


def _without_values_in_errors(engine: Engine) -> Engine:
    @event.listens_for(engine, "handle_error")
    def _drop_detail(context: Any) -> None:
        # The driver's error, and SQLAlchemy's, whose text was made from it.
        for error in (context.original_exception, context.sqlalchemy_exception):
            if error is None or not error.args or not isinstance(error.args[0], str):
                continue
            lines = error.args[0].splitlines()
            kept = [line for line in lines if not line.startswith("DETAIL:")]
            if len(kept) != len(lines):
                error.args = ("\n".join(kept), *error.args[1:])

    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver's own transaction handling is turned off so that every
        # transaction starts with BEGIN IMMEDIATE: a writer then waits for
        # the lock up front instead of failing half-way on an upgrade.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def statement_engine(engine: Engine) -> Engine:
    """An engine whose statements each commit on their own, on PostgreSQL.

    For a path whose every write is one atomic statement: no BEGIN and no
    COMMIT round trips. On SQLite, the same engine (its transactions cost
    no round trip, and BEGIN IMMEDIATE orders the writers).
    """
    if engine.dialect.name != "postgresql":
        return engine
    # An engine of its own, its connections in autocommit for good: switching
    # a pooled connection's isolation level at each checkout costs time.
    return _without_values_in_errors(
        create_engine(
            engine.url,
            isolation_level="AUTOCOMMIT",
            pool_size=engine.pool.size(),  # type: ignore[attr-defined]
            pool_pre_ping=False,
            hide_parameters=True,
        )
    )


def dialect_insert(dialect_name: str) -> Any:
    """The ``insert()`` with ON CONFLICT of a database (PostgreSQL or SQLite)."""
    return postgresql.insert if dialect_name == "postgresql" else sqlite.insert


def insert_for(session: Session, table: Any) -> Any:
    """INSERT with ON CONFLICT for the session's database (PostgreSQL or SQLite)."""
    return dialect_insert(session.get_bind().dialect.name)(table)
