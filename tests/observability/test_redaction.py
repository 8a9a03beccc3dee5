"""Values stay out of what is logged and traced, wherever a library would put them.

Shown: a SQLAlchemy error (a constraint broken by a statement whose bound
parameter is a Patient ID) says which statement failed but not the value,
on every engine qrfarm makes, SQLite and PostgreSQL; pydicom's warning about
an invalid value (a birth date a PACS wrote as 1960-01-01) reaches the log
naming the VR only, also when it comes as a Python warning; a span records
an exception by its type, not its message, and UID attributes only when the
process logs at DEBUG.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydicom.dataset import Dataset
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from qrfarm.models import make_engine
from qrfarm.models.session import statement_engine
from qrfarm.observability import logs, tracing
from tests.databases import postgres_database

PATIENT_ID = "P001"


def _engines(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    yield engine
    yield statement_engine(engine)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'q.db'}"
        return
    with postgres_database() as url:
        yield url


def test_a_database_error_names_the_statement_but_not_its_parameters(database_url: str) -> None:
    for engine in _engines(database_url):
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS phi_probe"))
            conn.execute(text("CREATE TABLE phi_probe (patient_id VARCHAR(16) PRIMARY KEY)"))
            conn.execute(text("INSERT INTO phi_probe VALUES (:p)"), {"p": PATIENT_ID})
        with pytest.raises(DBAPIError) as caught, engine.begin() as conn:
            conn.execute(text("INSERT INTO phi_probe VALUES (:p)"), {"p": PATIENT_ID})
        message = str(caught.value)
        assert "INSERT INTO phi_probe" in message
        assert PATIENT_ID not in message, message
        engine.dispose()


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield
    logging.captureWarnings(False)
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


@pytest.mark.parametrize("json", [False, True])
def test_pydicom_invalid_value_warnings_are_logged_without_the_value(
    root_logging: None, capfd: pytest.CaptureFixture[str], json: bool
) -> None:
    logs.configure(logging.DEBUG, json=json)
    ds = Dataset()
    ds.PatientID = PATIENT_ID
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        ds.PatientBirthDate = "1960-01-01"  # not a DA: pydicom warns, naming the value
        warnings.warn(f"Invalid value for VR LO: {PATIENT_ID!r}.", UserWarning, stacklevel=1)
    err = capfd.readouterr().err
    assert "Invalid value for VR DA" in err and "Invalid value for VR LO" in err, err
    assert "1960-01-01" not in err and PATIENT_ID not in err, err


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def tracer_to(exporter: InMemorySpanExporter) -> trace.Tracer:
    """qrfarm's tracer, exporting to memory (the process's provider left alone)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracing.SafeTracer(provider.get_tracer("test"))


def test_a_span_records_an_exception_by_its_type_only(spans: InMemorySpanExporter) -> None:
    with pytest.raises(ValueError), tracer_to(spans).start_as_current_span("probe"):
        raise ValueError(f"Invalid value for VR LO: {PATIENT_ID!r}")
    [span] = spans.get_finished_spans()
    recorded = repr((span.status.description, [(e.name, e.attributes) for e in span.events]))
    assert "ValueError" in recorded
    assert PATIENT_ID not in recorded, recorded


def test_uid_attributes_only_when_logging_at_debug(spans: InMemorySpanExporter) -> None:
    qrfarm_log = logging.getLogger("qrfarm")
    saved = qrfarm_log.level
    try:
        for level, kept in ((logging.INFO, False), (logging.DEBUG, True)):
            qrfarm_log.setLevel(level)
            spans.clear()
            tracer_to(spans).start_span(
                "probe", attributes={"dicom.sop_instance_uid": "1.2.3", "qrfarm.job.id": 1}
            ).end()
            [span] = spans.get_finished_spans()
            assert span.attributes is not None and span.attributes["qrfarm.job.id"] == 1
            assert ("dicom.sop_instance_uid" in span.attributes) is kept, (level, span.attributes)
    finally:
        qrfarm_log.setLevel(saved)
