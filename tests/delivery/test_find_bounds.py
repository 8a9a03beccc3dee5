"""Asking a destination what it holds, against one that answers without end:
what is kept is bounded, and so is the time."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)

from qrfarm.delivery import asking
from qrfarm.delivery.asking import Expected, find_at_destination
from qrfarm.dicom import Connection, Node, Root, Timeouts
from qrfarm.dicom.model import Operation, sop_class
from qrfarm.errors import DeadlineExceeded, DeliveryUnverifiable

STUDY, SERIES = "1.2.826.0.1.3680043.10.1234.1", "1.2.826.0.1.3680043.10.1234.1.1"


@contextmanager
def find_scp(on_find: Callable[[Any], Iterator[tuple[int, Dataset | None]]]) -> Iterator[int]:
    """A destination answering C-FINDs with ``on_find``, on 127.0.0.1; its port."""
    ae = AE(ae_title="ENDLESS")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find)]
    )
    try:
        yield int(server.socket.getsockname()[1])  # type: ignore[union-attr]
    finally:
        server.shutdown()


@pytest.fixture
def endless() -> Iterator[tuple[int, threading.Event, list[int]]]:
    """A destination answering any find with matches until told to stop
    (C-CANCEL), or with one match after another, slowly."""
    cancelled = threading.Event()
    sent: list[int] = []

    def on_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        for number in itertools.count():
            if event.is_cancelled:
                cancelled.set()
                yield 0xFE00, None
                return
            match = Dataset()
            match.QueryRetrieveLevel = "IMAGE"
            match.StudyInstanceUID = STUDY
            match.SeriesInstanceUID = SERIES
            match.SOPInstanceUID = f"{SERIES}.{number}"
            sent.append(number)
            yield 0xFF00, match

    with find_scp(on_find) as port:
        yield port, cancelled, sent


def _connection(port: int) -> Connection:
    context = build_context(sop_class(Root.STUDY, Operation.FIND))
    return Connection.open(
        Node("ENDLESS", "127.0.0.1", port), [context], timeouts=Timeouts(dimse=5.0)
    )


def test_a_find_answered_with_more_matches_than_asked_for_is_stopped(
    endless: tuple[int, threading.Event, list[int]],
) -> None:
    port, _cancelled, sent = endless
    expected = [Expected(f"{SERIES}.{n}", None, STUDY, SERIES) for n in range(10)]
    conn = _connection(port)
    try:
        with pytest.raises(DeliveryUnverifiable, match="more matches"):
            find_at_destination(conn, expected)
    finally:
        conn.abort()
    # Stopped about when the bound was passed, not after the peer's millions.
    assert len(sent) < 10_000


def test_a_find_that_runs_past_its_deadline_is_stopped(
    endless: tuple[int, threading.Event, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, _cancelled, _sent = endless
    monkeypatch.setattr(asking, "FIND_DEADLINE_S", 0.2)
    monkeypatch.setattr(asking, "FIND_SLACK", 10_000_000)
    expected = [Expected(f"{SERIES}.{n}", None, STUDY, SERIES) for n in range(10)]
    conn = _connection(port)
    try:
        with pytest.raises(DeadlineExceeded):
            find_at_destination(conn, expected)
    finally:
        conn.abort()


def test_a_match_in_another_study_or_series_confirms_nothing() -> None:
    """A destination answering the SOP Instance UIDs asked for under another
    study or series: those are not the instances sent there. One naming no
    study or series answers the keys asked."""
    other = "1.2.826.0.1.3680043.10.1234.2"
    answers = [(other, SERIES), (STUDY, f"{other}.1"), (None, None), (STUDY, SERIES)]

    def on_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        for number, (study, series) in enumerate(answers):
            match = Dataset()
            match.QueryRetrieveLevel = "IMAGE"
            if study is not None:
                match.StudyInstanceUID, match.SeriesInstanceUID = study, series
            match.SOPInstanceUID = f"{SERIES}.{number}"
            yield 0xFF00, match

    with find_scp(on_find) as port:
        conn = _connection(port)
        try:
            expected = [Expected(f"{SERIES}.{n}", None, STUDY, SERIES) for n in range(4)]
            assert find_at_destination(conn, expected) == {f"{SERIES}.2", f"{SERIES}.3"}
        finally:
            conn.close()
