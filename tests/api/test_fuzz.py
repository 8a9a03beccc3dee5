"""Fuzzing the REST API against its own OpenAPI document, over a real PostgreSQL.

Every operation is called with requests schemathesis generates from the
document FastAPI publishes (valid ones and invalid ones), with a valid bearer
token, and each answer must not be a server error and must be what the
document says: a documented status code and content type, a body matching
the documented schema.

The app is the one ``qrfarm api`` serves, built by ``create_app`` in this
process, over a freshly migrated PostgreSQL database (whose text rules are
stricter than SQLite's) and the embedded filesystem broker in a temporary
directory. Nothing it may connect to is outside 127.0.0.1: the allow-list
says so, and the one registered node is a port nothing listens on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from pydantic import SecretStr
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import create_engine

from qrfarm.api.app import create_app
from qrfarm.api.tokens import ALL_SCOPES, issue
from qrfarm.config import Settings
from qrfarm.jobs.nodes import NodeSpec, upsert_node
from qrfarm.models import make_engine, session_factory, upgrade
from qrfarm.workflow.rules import Rule, save_rule
from tests.databases import postgres_database
from tests.peers.ports import free_port

# The name the schema's own examples of a job use (JobIn's "node": "pacs1"):
# the examples phase then submits jobs that get past the node lookup and are
# recorded and sent, instead of all stopping at "node is not registered".
NODE = "pacs1"
RULE = "ct-priors"

# Not a server error, and conformance to the document. Not the checks that
# judge what the API chooses to accept (negative_data_rejection and the
# like): those are policy, not whether the document tells the truth.
CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


class _NoDispatch:
    """The dispatcher of the app built only for its document: it is never called."""

    def send(self, task: str, args: list[Any], queue: str, priority: int = 0) -> None:
        raise AssertionError("the document's app is never called")


def _document() -> dict[str, Any]:
    """The OpenAPI document, from an app that is never called.

    Schemathesis reads the document when the module is collected, before any
    database exists (its lazy ``schemathesis.pytest.from_fixture`` would wait
    for the fixture, but schemathesis 4.32 sets ``request.node._nodeid``,
    which pytest 9 no longer has). The document depends on the code, not on
    the database, and the fixture checks that the real app publishes the same.
    """
    app = create_app(
        Settings(database_url="sqlite://"),
        engine=create_engine("sqlite://"),
        dispatcher=_NoDispatch(),
    )
    return app.openapi()


def _config() -> schemathesis.Config:
    # Documented 5xx answers that are this setup's truth, not failures: the
    # health probe is degraded (503) because no storage SCP runs here, and an
    # echo of the registered node gets 502 because nothing listens on its
    # port. Every other operation keeps the default: no 5xx at all.
    designed_5xx = [("/health", "503"), ("/nodes/{name}/echo", "502")]
    return schemathesis.Config.from_dict(
        {
            # Schemathesis' own seed as well as Hypothesis' derandomize: the
            # coverage phase draws from the former.
            "seed": 20240601,
            "operations": [
                {
                    "include-path": path,
                    "checks": {
                        "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", status]}
                    },
                }
                for path, status in designed_5xx
            ],
        }
    )


schema = schemathesis.openapi.from_dict(_document(), config=_config())


@dataclass(frozen=True)
class Api:
    app: FastAPI
    headers: dict[str, str]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The app over a migrated PostgreSQL database with a token, a node and a rule."""
    tmp = tmp_path_factory.mktemp("fuzz")
    with postgres_database() as url:
        upgrade(url)
        engine = make_engine(url)
        try:
            with session_factory(engine)() as db:
                token = issue(db, "fuzz", ALL_SCOPES)
                upsert_node(db, NodeSpec(NODE, "PACS1", "127.0.0.1", free_port()))
                save_rule(db, RULE, Rule(nodes=[NODE], modalities=["CT"], max_studies=2))
                db.commit()
            app_settings = Settings(
                database_url=url,
                data_dir=tmp / "data",
                storage_root=tmp / "storage",
                # Explicit, so that no QRFARM_BROKER_URL in the environment
                # sends the fuzz's jobs to a real broker.
                broker_url=None,
                allowed_hosts=["127.0.0.1"],
                webhook_secret=SecretStr("whsec_ZnV6ei1zZWNyZXQtZnV6ei1zZWNyZXQtZnV6eg=="),
                scp_port=free_port(),
            )
            # dispatcher=None: the real Celery producer, over the embedded
            # filesystem transport in data_dir.
            app = create_app(app_settings, engine=engine)
            assert app.openapi() == schema.raw_schema, "the fuzzed document is not the app's"
            yield Api(app, {"Authorization": f"Bearer {token}"})
        finally:
            engine.dispose()


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    # Generating a JobIn or a PrefetchIn takes what it takes on a slow CI
    # machine; that is no finding about the API.
    suppress_health_check=[HealthCheck.too_slow],
)
def test_api_answers_as_documented(case: schemathesis.Case[Any], api: Api) -> None:
    # The token on every case, so that the fuzz reaches the routes. Only the
    # negative cases schemathesis makes to test a missing Authorization header
    # (about one request in twelve) go without it, and must get the 401.
    case.call_and_validate(app=api.app, headers=api.headers, checks=CHECKS)
