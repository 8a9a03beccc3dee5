"""A node's windows for bulk work: when, in its local time, bulk jobs may start.

A window is written as people say it: ``19:00-07:00`` (every day, through
the night into the next morning), ``mon-fri 19:00-07:00`` (starting on those
evenings), ``sat,sun`` (the whole of those days). Days name the day a window
starts on. Times are the node's wall-clock time in its IANA time zone, so
that a window follows daylight saving time as the hospital's clocks do.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from qrfarm.errors import InvalidNode

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY = 24 * 60
MAX_WINDOWS = 32
_TIME = re.compile(r"^(\d{1,2}):(\d{2})$")


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # the weekdays it starts on, 0 for Monday
    start: int  # minutes after midnight
    length: int  # minutes, 1 to a whole day
    text: str


def _minutes(text: str, window: str, *, end: bool) -> int:
    match = _TIME.match(text)
    if match is None:
        raise InvalidNode(f"bulk window {window!r}: {text!r} is not a time HH:MM")
    hours, minutes = int(match[1]), int(match[2])
    if minutes > 59 or hours > 24 or (hours == 24 and (minutes or not end)):
        raise InvalidNode(f"bulk window {window!r}: {text!r} is not a time of day")
    return hours * 60 + minutes


def _days(text: str, window: str) -> frozenset[int]:
    if text in ("daily", "*"):
        return frozenset(range(7))
    days: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        try:
            start = DAY_NAMES.index(first)
            stop = DAY_NAMES.index(last) if last else start
        except ValueError:
            raise InvalidNode(
                f"bulk window {window!r}: {part!r} is not a day or a range of days "
                f"({', '.join(DAY_NAMES)}, e.g. mon-fri)"
            ) from None
        day = start
        days.add(day)
        while day != stop:  # a range may wrap past Sunday (fri-mon)
            day = (day + 1) % 7
            days.add(day)
    return frozenset(days)


def parse_window(text: str) -> Window:
    """One window; InvalidNode naming what is wrong."""
    words = text.strip().lower().split()
    if not words or len(words) > 2:
        raise InvalidNode(
            f"bulk window {text!r}: write [DAYS] [HH:MM-HH:MM], "
            "e.g. 'mon-fri 19:00-07:00' or 'sat,sun'"
        )
    days = frozenset(range(7))
    if ":" not in words[0]:
        days = _days(words[0], text)
        words = words[1:]
    if not words:
        return Window(days, 0, DAY, text.strip())
    begin, sep, finish = words[0].partition("-")
    if not sep:
        raise InvalidNode(f"bulk window {text!r}: the times are written HH:MM-HH:MM")
    start = _minutes(begin, text, end=False)
    stop = _minutes(finish, text, end=True)
    if start == stop:
        raise InvalidNode(f"bulk window {text!r}: it starts and ends at the same time")
    length = stop - start if stop > start else stop + DAY - start
    return Window(days, start, length, text.strip())


def parse_windows(texts: Iterable[str]) -> list[Window]:
    windows = [parse_window(text) for text in texts]
    if len(windows) > MAX_WINDOWS:
        raise InvalidNode(f"at most {MAX_WINDOWS} bulk windows per node")
    return windows


def zone(name: str | None) -> ZoneInfo:
    """The node's time zone (none: UTC); InvalidNode for a name the system does not know."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidNode(f"time zone {name!r} is not an IANA time zone name") from None


def _starts(window: Window, local: dt.datetime, days: range) -> Iterable[dt.datetime]:
    """The window's starts (local wall-clock time) on the days ``days`` from ``local``'s date."""
    for offset in days:
        date = local.date() + dt.timedelta(days=offset)
        if date.weekday() in window.days:
            yield dt.datetime.combine(date, dt.time()) + dt.timedelta(minutes=window.start)


def _local(now_utc: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    return now_utc.replace(tzinfo=dt.UTC).astimezone(tz).replace(tzinfo=None)


def is_open(windows: list[Window], tz: ZoneInfo, now_utc: dt.datetime) -> bool:
    """Whether bulk work may start at ``now_utc`` (naive UTC); no windows: always."""
    if not windows:
        return True
    local = _local(now_utc, tz)
    return any(
        start <= local < start + dt.timedelta(minutes=window.length)
        for window in windows
        for start in _starts(window, local, range(-1, 1))
    )


def next_open(windows: list[Window], tz: ZoneInfo, now_utc: dt.datetime) -> dt.datetime:
    """When the next window opens after ``now_utc``, in naive UTC."""
    local = _local(now_utc, tz)
    starts = [
        start
        for window in windows
        for start in _starts(window, local, range(0, 8))
        if start > local
    ]
    if not starts:  # no windows: open now
        return now_utc
    first = min(starts).replace(tzinfo=tz)
    return first.astimezone(dt.UTC).replace(tzinfo=None)
