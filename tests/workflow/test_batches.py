"""Batches on the database of record (SQLite and PostgreSQL): 1,000 rows with 3
bad ones make 997 children and 3 row errors named by row and column, and a
CSV of results; rows by accession become retrievals; documents that cannot be
read as a batch are refused whole, naming why."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.errors import FieldError
from qrfarm.jobs import bulk
from qrfarm.jobs.bulk import JobFilter
from qrfarm.jobs.nodes import NodeSpec, upsert_node
from qrfarm.jobs.priority import BULK
from qrfarm.jobs.submit import SubmitRules
from qrfarm.models import Job, JobKind, JobState, Retrieval
from qrfarm.workflow import batch_report, batches
from tests.databases import database_url, migrated
from tests.jobs.conftest import Sent

RULES = SubmitRules(default_destination="QRFARMSCP")
HEADER = "study_uid,source,destination\n"


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with database_url(request.param, tmp_path) as url, migrated(url) as (_, factory):
        with factory() as session, session.begin():
            upsert_node(session, NodeSpec("pacs", "PACS", "127.0.0.1", 11112))
        yield factory


@pytest.fixture(scope="module")
def one_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sessionmaker[Session]]:
    """One database for the documents refused before anything is written."""
    url = f"sqlite:///{tmp_path_factory.mktemp('batches') / 'q.db'}"
    with migrated(url) as (_, factory):
        with factory() as session, session.begin():
            upsert_node(session, NodeSpec("pacs", "PACS", "127.0.0.1", 11112))
        yield factory


def _thousand_rows() -> bytes:
    lines = [HEADER]
    for n in range(1, 1001):
        if n == 10:
            lines.append("1.2.x.4,pacs,\n")  # not a UID
        elif n == 500:
            lines.append(f"1.2.3.{n},nowhere,\n")  # no such node
        elif n == 999:
            lines.append(f"1.2.3.{n},pacs,ELSEWHERE\n")  # not a registered destination
        else:
            lines.append(f"1.2.3.{n},pacs,\n")
    return "".join(lines).encode()


@pytest.fixture
def farm_sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """PostgreSQL only: the farm's database (SQLite takes the smaller batches below)."""
    with database_url("postgresql", tmp_path) as url, migrated(url) as (_, factory):
        with factory() as session, session.begin():
            upsert_node(session, NodeSpec("pacs", "PACS", "127.0.0.1", 11112))
        yield factory


def test_a_thousand_rows_with_three_bad_make_997_children_and_3_row_errors(
    farm_sessions: sessionmaker[Session],
) -> None:
    sessions = farm_sessions
    sent = Sent()
    batch_id = batches.submit(sessions, batches.BatchRequest(_thousand_rows(), "csv"), sent, RULES)
    with sessions() as session:
        summary = batch_report.summary(session, batch_id)
        children = session.scalar(
            select(func.count()).select_from(Job).where(Job.batch_id == batch_id)
        )
        states = set(session.scalars(select(Job.state).where(Job.batch_id == batch_id)))
        priorities = set(session.scalars(select(Job.priority).where(Job.batch_id == batch_id)))
        text = "".join(batch_report.results_csv(session, batch_id))
    assert summary["rows"] == 1000
    assert summary["children"] == children == 997
    assert summary["row_errors"] == 3
    assert [(e["row"], e["column"]) for e in summary["errors"]] == [
        (10, "study_uid"),
        (500, "source"),
        (999, "destination"),
    ]
    assert "not a UID" in summary["errors"][0]["message"]
    assert "'nowhere' is not registered" in summary["errors"][1]["message"]
    assert states == {JobState.QUEUED} and priorities == {BULK}
    assert summary["progress"] == {"ended": 0, "of": 997, "by_state": {"queued": 997}}
    # Every child sent once, in the bulk lane.
    assert len(sent.messages) == 997 and set(sent.priorities) == {BULK}
    results = list(csv.DictReader(io.StringIO(text)))
    assert len(results) == 1000
    assert [r["row"] for r in results] == [str(n) for n in range(1, 1001)]
    refused = [r for r in results if r["outcome"] == "refused"]
    assert [(r["row"], r["error_column"]) for r in refused] == [
        ("10", "study_uid"),
        ("500", "source"),
        ("999", "destination"),
    ]
    assert results[0]["outcome"] == "queued" and results[0]["study_uid"] == "1.2.3.1"
    assert results[0]["job_id"]


def test_rows_by_accession_and_patient_become_retrievals(
    sessions: sessionmaker[Session],
) -> None:
    document = (
        b'{"priority": 5, "rows": ['
        b'{"accession": "ACC1", "source": "pacs"},'
        b'{"patient_id": "P1", "date_from": "2020-01-01", "date_to": "2020-12-31",'
        b' "source": "pacs"},'
        b'{"accession": "A*", "source": "pacs"},'
        b'{"study_uid": "1.2.3", "accession": "ACC2", "source": "pacs"},'
        b'{"patient_id": "P1", "date_from": "2021-01-01", "date_to": "2020-01-01",'
        b' "source": "pacs"}]}'
    )
    batch_id = batches.submit(sessions, batches.BatchRequest(document, "json"), Sent(), RULES)
    with sessions() as session:
        summary = batch_report.summary(session, batch_id)
        finds = list(session.scalars(select(Job).where(Job.batch_id == batch_id)))
        retrievals = session.scalar(select(func.count()).select_from(Retrieval))
        outcomes = list(batch_report.outcomes(session, batch_id))
    assert summary["priority"] == 5
    assert summary["children"] == retrievals == 2
    assert {job.kind for job in finds} == {JobKind.FIND}  # each retrieval's find
    assert [(e["row"], e["column"]) for e in summary["errors"]] == [
        (3, "accession"),
        (4, "study_uid"),  # the second way given
        (5, "date_to"),
    ]
    assert outcomes[0]["outcome"] == "searching" and outcomes[0]["retrieval_id"]
    # A move the scheduler makes later names only its retrieval: a bulk action
    # by batch reaches it all the same.
    with sessions() as session, session.begin():
        later = Job(
            kind=JobKind.MOVE,
            root="study",
            level="STUDY",
            identifier={},
            node_id=finds[0].node_id,
            retrieval_id=outcomes[0]["retrieval_id"],
        )
        session.add(later)
        session.flush()
        later_id = later.id
    cancelled = bulk.cancel(sessions, JobFilter(batch_id=batch_id))
    assert cancelled.job_ids == sorted([*(job.id for job in finds), later_id])


@pytest.mark.parametrize(
    ("data", "source_format", "words"),
    [
        (b"study_uid,source,colour\n1.2,pacs,red\n", "csv", "unknown column 'colour'"),
        (b"study_uid,destination\n1.2,X\n", "csv", "needs a source column"),
        (b"source\npacs\n", "csv", "needs one of the columns"),
        (b"\xff\xfe", "csv", "UTF-8"),
        (b"", "csv", "no header row"),
        (b'{"rows": 3}', "json", "a list of rows"),
        (b'{"rows": [], "extra": 1}', "json", "rows and a priority only"),
        (b"[{", "json", "cannot be read"),
        (b"[" * 200_000, "json", "cannot be read"),
        (b"study_uid,source\n" + b"1.2,pacs\n" * 10_001, "csv", "at most 10000 rows"),
    ],
)
def test_a_document_that_is_no_batch_is_refused_whole(
    one_sqlite: sessionmaker[Session], data: bytes, source_format: str, words: str
) -> None:
    sessions = one_sqlite
    with pytest.raises(FieldError, match=words):
        batches.submit(sessions, batches.BatchRequest(data, source_format), Sent(), RULES)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
