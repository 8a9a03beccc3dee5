"""The migrations build the same schema as the models, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from qrfarm.models import Base, make_engine, upgrade
from qrfarm.models.migrate import is_current
from tests.databases import database_url


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_upgrade_builds_exactly_the_models_schema(kind: str, tmp_path: Path) -> None:
    with database_url(kind, tmp_path) as url:
        engine = make_engine(url)
        assert not is_current(engine)
        upgrade(url)
        upgrade(url)  # a second run changes nothing
        assert is_current(engine)
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
            tables = set(inspect(connection).get_table_names())
        engine.dispose()
    assert diff == []
    assert {
        "jobs",
        "attempts",
        "dimse_responses",
        "find_results",
        "received_instances",
        "orphan_instances",
        "nodes",
        "move_message_ids",
        "expected_instances",
    } <= tables


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'wal.db'}"
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()
