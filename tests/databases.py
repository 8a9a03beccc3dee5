"""Fresh databases for tests: a SQLite file, or a new database on the machine's PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.models import make_engine, session_factory, upgrade

POSTGRES_ADMIN = os.environ.get(
    "QRFARM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _postgres_available() -> bool:
    try:
        with psycopg.connect(POSTGRES_ADMIN, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database; dropped afterwards."""
    if not _postgres_available():
        message = f"PostgreSQL is not reachable at {POSTGRES_ADMIN}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    name = f"qrfarm_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield (
            POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
            + f"/{name}"
        )
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def database_url(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'qrfarm.db'}"
    else:
        with postgres_database() as url:
            yield url


@contextmanager
def migrated(url: str) -> Iterator[tuple[Engine, sessionmaker[Session]]]:
    upgrade(url)
    engine = make_engine(url)
    try:
        yield engine, session_factory(engine)
    finally:
        engine.dispose()
