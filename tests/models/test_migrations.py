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


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_upgrade_keeps_the_jobs_already_recorded(kind: str, tmp_path: Path) -> None:
    from sqlalchemy import text

    with database_url(kind, tmp_path) as url:
        upgrade(url, "0001")
        engine = make_engine(url)
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO nodes (name, ae_title, host, port, max_associations, "
                    "store_ae_titles, restrict_store_host, tls, created_at) "
                    "VALUES ('n', 'PACS', '127.0.0.1', 104, 1, '[]', false, false, '2026-01-01')"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO jobs (kind, root, level, identifier, node_id, priority, state, "
                    "recorded_count, created_at, updated_at) VALUES ('move', 'study', 'STUDY', "
                    "'{}', 1, 0, 'partial', 7, '2026-01-01', '2026-01-01')"
                )
            )
        upgrade(url)
        with engine.connect() as connection:
            row = connection.execute(
                text(
                    "SELECT state, recorded_count, missing_uids, cancel_requested, max_attempts, "
                    "attempt_count FROM jobs"
                )
            ).one()
        engine.dispose()
    assert row[0] == "partial" and row[1] == 7
    assert row[2] in ("[]", [])
    assert not row[3] and row[4] == 5 and row[5] == 0


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_upgrade_keeps_each_node_admitted_from_where_it_was(kind: str, tmp_path: Path) -> None:
    # Before 0007 a node checked its host only when asked (restrict_store_host);
    # one that did not is kept admitting from any host (behind a balancer the SCP
    # saw the balancer's address), one that did keeps its own host.
    from sqlalchemy import text

    with database_url(kind, tmp_path) as url:
        upgrade(url, "0006")
        engine = make_engine(url)
        with engine.begin() as connection:
            for name, restrict in (("open", False), ("checked", True)):
                connection.execute(
                    text(
                        "INSERT INTO nodes (name, ae_title, host, port, max_associations, "
                        "store_ae_titles, restrict_store_host, tls, created_at) VALUES "
                        "(:name, 'PACS', '127.0.0.1', 104, 1, '[]', :restrict, false, "
                        "'2026-01-01')"
                    ),
                    {"name": name, "restrict": restrict},
                )
        upgrade(url)
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT name, any_store_host, store_hosts FROM nodes ORDER BY name")
            ).all()
        engine.dispose()
    assert [(name, bool(any_host)) for name, any_host, _ in rows] == [
        ("checked", False),
        ("open", True),
    ]
    assert all(hosts in ("[]", []) for _, _, hosts in rows)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_upgrade_gives_existing_tokens_read_and_submit_but_not_admin(
    kind: str, tmp_path: Path
) -> None:
    # Before 0008 every token could do everything, nodes and rules included;
    # the tokens already issued keep what a workflow engine does, and admin
    # is granted again only explicitly.
    from sqlalchemy import text

    with database_url(kind, tmp_path) as url:
        upgrade(url, "0007")
        engine = make_engine(url)
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO api_tokens (name, token_hash, created_at) "
                    "VALUES ('ris', :hash, '2026-01-01')"
                ),
                {"hash": "0" * 64},
            )
        upgrade(url)
        with engine.connect() as connection:
            scopes = connection.execute(text("SELECT scopes FROM api_tokens")).scalar_one()
        engine.dispose()
    assert scopes.split() == ["read", "submit"]
