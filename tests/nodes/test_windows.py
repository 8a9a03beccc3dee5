"""Bulk windows: parsed as people write them, open and next opening in the node's local time."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

import pytest

from qrfarm.errors import InvalidNode
from qrfarm.jobs.nodes import NodeSpec, upsert_node
from qrfarm.nodes.windows import is_open, next_open, parse_windows, zone
from tests.databases import migrated

ZURICH = zone("Europe/Zurich")


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


@pytest.mark.parametrize(
    ("now_utc", "expected"),
    [
        ("2026-12-09T17:59:00", False),  # Wednesday 18:59 in Zurich (UTC+1)
        ("2026-12-09T18:00:00", True),  # 19:00
        ("2026-12-10T05:59:00", True),  # Thursday 06:59, the same night's window
        ("2026-12-10T06:00:00", False),  # 07:00
        ("2026-12-12T10:00:00", True),  # Saturday: the whole day
        # Monday 06:00: Sunday's whole day ended at midnight, and Sunday
        # evening is no weekday evening.
        ("2026-12-14T05:00:00", False),
    ],
)
def test_evenings_of_weekdays_and_whole_weekends(now_utc: str, expected: bool) -> None:
    windows = parse_windows(["mon-fri 19:00-07:00", "sat,sun"])
    assert is_open(windows, ZURICH, utc(now_utc)) is expected


def test_the_next_opening_in_utc_follows_the_local_clock() -> None:
    windows = parse_windows(["mon-fri 19:00-07:00"])
    assert next_open(windows, ZURICH, utc("2026-12-09T12:00:00")) == utc("2026-12-09T18:00:00")
    # Friday morning after the window: the next is Monday evening.
    assert next_open(windows, ZURICH, utc("2026-12-11T07:00:00")) == utc("2026-12-11T18:00:00")
    assert next_open(windows, ZURICH, utc("2026-12-11T19:00:00")) == utc("2026-12-14T18:00:00")
    # Summer time: 19:00 in Zurich is 17:00 UTC.
    assert next_open(windows, ZURICH, utc("2026-07-08T12:00:00")) == utc("2026-07-08T17:00:00")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("19:00-7", "not a time HH:MM"),
        ("25:00-07:00", "not a time of day"),
        ("someday 19:00-07:00", "not a day or a range of days"),
        ("19:00-19:00", "starts and ends at the same time"),
        ("mon-fri 19:00 07:00 x", "write \\[DAYS\\]"),
        ("19:00", "HH:MM-HH:MM"),
    ],
)
def test_a_bad_window_is_refused_naming_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(InvalidNode, match=words):
        parse_windows([text])


def test_an_unknown_time_zone_is_refused() -> None:
    with pytest.raises(InvalidNode, match="not an IANA time zone"):
        zone("Mars/Olympus_Mons")


def test_a_node_keeps_its_windows_zone_and_cap_and_refuses_bad_ones(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    with migrated(url) as (_, sessions), sessions() as session, session.begin():
        spec = NodeSpec(
            "pacs",
            "PACS",
            "127.0.0.1",
            104,
            bulk_windows=["mon-fri 19:00-07:00", "sat,sun"],
            timezone="Europe/Zurich",
            retrieves_per_minute=30,
        )
        row = upsert_node(session, spec)
        assert (row.bulk_windows, row.timezone, row.retrieves_per_minute) == (
            ["mon-fri 19:00-07:00", "sat,sun"],
            "Europe/Zurich",
            30,
        )
        for bad, words in (
            (replace(spec, bulk_windows=["weekdays"]), "not a day"),
            (replace(spec, timezone="Nowhere/City"), "not an IANA time zone"),
            (replace(spec, retrieves_per_minute=0), "retrieves a minute"),
        ):
            with pytest.raises(InvalidNode, match=words):
                upsert_node(session, bad)
