"""Reading a batch: CSV or JSON rows, each checked column by column.

A row names what to retrieve (one of ``patient_id``, ``accession``,
``study_uid``; a date range only with a patient ID), where from (``source``,
a registered node) and optionally where to (``destination``). A bad row is
refused by its number (1 for the first row of data) and the column at fault;
the others go on. A document that cannot be read as a whole (not CSV or JSON,
an unknown column, too many rows) is refused whole, naming why.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from qrfarm.errors import FieldError

COLUMNS = (
    "patient_id",
    "accession",
    "study_uid",
    "source",
    "destination",
    "date_from",
    "date_to",
)
WHAT = ("patient_id", "accession", "study_uid")
MAX_ROWS = 10_000
MAX_LENGTH = {"accession": 16, "study_uid": 64, "patient_id": 64, "source": 64, "destination": 64}
UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


@dataclass
class Row:
    number: int
    values: dict[str, str | None]
    error_column: str | None = None
    error: str | None = None

    def refuse(self, column: str, message: str) -> None:
        if self.error is None:  # the first fault found is the one reported
            self.error_column, self.error = column, message

    @property
    def kind(self) -> str:
        return next((name for name in WHAT if self.values.get(name)), "study_uid")


@dataclass
class BatchInput:
    rows: list[Row] = field(default_factory=list)
    source_format: str = "csv"

    @property
    def good(self) -> list[Row]:
        return [row for row in self.rows if row.error is None]

    @property
    def bad(self) -> list[Row]:
        return [row for row in self.rows if row.error is not None]


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _records_csv(data: bytes) -> Iterable[dict[str, Any]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise FieldError(["body"], "a CSV batch is UTF-8 text") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None:
        raise FieldError(["body"], "the CSV has no header row (names of the columns)")
    names = [(name or "").strip().lower() for name in reader.fieldnames]
    _check_columns(names)
    reader.fieldnames = names
    try:
        for record in reader:
            if None in record:  # more cells than the header has names
                yield {"__extra__": True}
                continue
            yield record
    except csv.Error as exc:
        raise FieldError(
            ["body"], f"the CSV cannot be read at line {reader.line_num}: {exc}"
        ) from None


def _records_json(data: bytes) -> tuple[list[Any], int | None]:
    try:
        document = json.loads(data)
    # RecursionError: nesting deeper than the parser's stack (a body of "[[[[...").
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FieldError(["body"], f"the JSON cannot be read: {exc}") from None
    priority = None
    if isinstance(document, dict):
        unknown = sorted(set(document) - {"rows", "priority"})
        if unknown:
            raise FieldError(["body", unknown[0]], "a batch has rows and a priority only")
        priority = document.get("priority")
        if priority is not None and (not isinstance(priority, int) or isinstance(priority, bool)):
            raise FieldError(["body", "priority"], "a priority is a whole number")
        document = document.get("rows")
    if not isinstance(document, list):
        raise FieldError(["body", "rows"], "a JSON batch is a list of rows (objects)")
    for record in document:
        if isinstance(record, dict):
            _check_columns([str(name).strip().lower() for name in record])
    return document, priority


def _check_columns(names: list[str]) -> None:
    unknown = [name for name in names if name not in COLUMNS]
    if unknown:
        raise FieldError(
            ["body", unknown[0]],
            f"unknown column {unknown[0][:64]!r}; the columns are {', '.join(COLUMNS)}",
        )
    if "source" not in names:
        raise FieldError(["body", "source"], "a batch needs a source column (a node's name)")
    if not any(name in names for name in WHAT):
        raise FieldError(["body"], f"a batch needs one of the columns {', '.join(WHAT)}")


def parse(data: bytes, source_format: str) -> tuple[BatchInput, int | None]:
    """The rows, each checked on its own (no database); and a JSON document's priority."""
    priority = None
    if source_format == "json":
        records, priority = _records_json(data)
    elif source_format == "csv":
        records = list(_records_csv(data))
    else:
        raise FieldError(["header", "Content-Type"], "a batch is text/csv or application/json")
    if len(records) > MAX_ROWS:
        raise FieldError(["body"], f"a batch has at most {MAX_ROWS} rows, not {len(records)}")
    batch = BatchInput(source_format=source_format)
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict) or "__extra__" in record:
            row = Row(number, {name: None for name in COLUMNS})
            row.refuse("row", "not a row of the columns named in the header")
        else:
            values = {str(k).strip().lower(): _clean(v) for k, v in record.items()}
            row = Row(number, {name: values.get(name) for name in COLUMNS})
            check_row(row)
        batch.rows.append(row)
    return batch, priority


def _date(row: Row, column: str) -> None:
    value = row.values[column]
    if value is None:
        return
    try:
        day = dt.datetime.strptime(value.replace("-", ""), "%Y%m%d").date()
    except ValueError:
        row.refuse(column, "not a date: write YYYY-MM-DD or YYYYMMDD")
        return
    row.values[column] = day.strftime("%Y%m%d")


def check_row(row: Row) -> None:
    """Each column of one row, on its own: lengths, one way to say what, dates."""
    values = row.values
    for column, limit in MAX_LENGTH.items():
        value = values[column]
        if value is not None and len(value) > limit:
            row.refuse(column, f"longer than {limit} characters")
    given = [name for name in WHAT if values[name]]
    if not given:
        row.refuse("study_uid", "give one of patient_id, accession, study_uid")
    elif len(given) > 1:
        row.refuse(
            given[1], f"give one of patient_id, accession, study_uid, not {' and '.join(given)}"
        )
    for name in ("patient_id", "accession"):
        value = values[name]
        if value is not None and any(c in value for c in "*?\\"):
            row.refuse(name, "one exact value: no wildcards (* ?) or backslash")
    uid = values["study_uid"]
    if uid is not None and not UID.match(uid):
        row.refuse("study_uid", "not a UID (digits and dots)")
    if not values["source"]:
        row.refuse("source", "empty: the name of the node to retrieve from")
    _date(row, "date_from")
    _date(row, "date_to")
    dates = [name for name in ("date_from", "date_to") if values[name]]
    if dates and not values["patient_id"]:
        row.refuse(dates[0], "a date range goes with a patient_id only")
    if (
        values["date_from"]
        and values["date_to"]
        and row.error is None
        and values["date_from"] > values["date_to"]
    ):
        row.refuse("date_to", "the date range ends before it begins")
