"""Connection behaviour against peers that misbehave: timeouts, aborts, cancels, odd counts."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import evt

from qrfarm.dicom import (
    Connection,
    Level,
    Operation,
    Response,
    Root,
    StatusCategory,
    Timeouts,
    build_query_identifier,
    build_retrieve_identifier,
    qr_contexts,
)
from qrfarm.errors import (
    AcseTimeout,
    AssociationAborted,
    DeadlineExceeded,
    DimseTimeout,
    InvalidIdentifier,
    PeerUnreachable,
    PresentationContextError,
)

from .fake_pacs import fake_pacs, free_port, scripted_move_pacs, silent_listener

STUDY = "1.2.826.0.1.3680043.10.1.1"
FIND = qr_contexts([Operation.FIND])
ALL = qr_contexts([Operation.ECHO, Operation.FIND, Operation.GET, Operation.MOVE])


def study_query() -> Dataset:
    return build_query_identifier(Root.STUDY, Level.STUDY, {"PatientID": "P1"})


def match(n: int) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = f"{STUDY}.{n}"
    return ds


def test_nothing_listening_is_peer_unreachable_with_the_os_reason() -> None:
    node_port = free_port()
    from qrfarm.dicom import Node

    with pytest.raises(PeerUnreachable, match="Connection refused") as info:
        Connection.open(Node("NOBODY", "127.0.0.1", node_port), FIND)
    assert info.value.retriable


def test_peer_that_never_answers_the_association_request_times_out() -> None:
    with silent_listener() as node, pytest.raises(AcseTimeout, match="did not answer"):
        Connection.open(node, FIND, timeouts=Timeouts(acse=1.0))


def test_peer_that_never_answers_a_find_is_a_dimse_timeout() -> None:
    release = threading.Event()

    def handle_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        release.wait(10)
        yield 0x0000, None

    with fake_pacs([(evt.EVT_C_FIND, handle_find)]) as node:
        conn = Connection.open(node, FIND, timeouts=Timeouts(dimse=1.0))
        started = time.monotonic()
        with pytest.raises(DimseTimeout, match="no response within 1 s"):
            conn.find(study_query())
        release.set()
        assert time.monotonic() - started < 5
        assert not conn.is_open


def test_association_aborted_mid_find_keeps_the_responses_received() -> None:
    def handle_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        yield 0xFF00, match(1)
        time.sleep(0.2)
        event.assoc.abort()
        yield 0xFF00, match(2)

    with fake_pacs([(evt.EVT_C_FIND, handle_find)]) as node:
        conn = Connection.open(node, FIND)
        with pytest.raises(AssociationAborted) as info:
            conn.find(study_query())
    partial = info.value.partial
    assert [m.StudyInstanceUID for m in partial.matches] == [f"{STUDY}.1"]


def test_cancel_from_a_response_callback_ends_the_find_with_cancel_status() -> None:
    def handle_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        for n in range(50):
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, match(n)
            time.sleep(0.05)
        yield 0x0000, None

    with fake_pacs([(evt.EVT_C_FIND, handle_find)]) as node, Connection.open(node, FIND) as conn:

        def cancel_after_three(response: Response) -> None:
            if len(seen) == 2:
                assert conn.cancel()
            seen.append(response)

        seen: list[Response] = []
        result = conn.find(study_query(), on_response=cancel_after_three)
        assert result.final.category is StatusCategory.CANCEL
        assert 3 <= len(result.matches) < 50
        assert not conn.cancel()  # nothing runs any more
        assert conn.is_open  # and the association is still usable


def test_deadline_cancels_then_aborts_a_peer_that_ignores_cancel() -> None:
    def handle_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        for n in range(1000):
            yield 0xFF00, match(n)
            time.sleep(0.05)
        yield 0x0000, None

    with fake_pacs([(evt.EVT_C_FIND, handle_find)]) as node:
        conn = Connection.open(node, FIND, timeouts=Timeouts(dimse=2.0))
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as info:
            conn.find(study_query(), deadline=0.5)
        assert time.monotonic() - started < 5
        assert info.value.partial is not None and len(info.value.partial.matches) > 0


def counts(status: int, remaining: int | None = None, **kw: int) -> Dataset:
    ds = Dataset()
    ds.Status = status
    if remaining is not None:
        ds.NumberOfRemainingSuboperations = remaining
    for name, value in kw.items():
        setattr(ds, f"NumberOf{name.capitalize()}Suboperations", value)
    return ds


def test_move_uses_the_message_id_given_and_keeps_every_response() -> None:
    seen: dict[str, Any] = {}

    def script(req: Any) -> list[tuple[Dataset, Dataset | None]]:
        seen["message_id"] = req.MessageID
        seen["destination"] = req.MoveDestination
        final = counts(0xA702, completed=1, failed=2, warning=0)
        final.ErrorComment = "disk full"
        failed = Dataset()
        failed.FailedSOPInstanceUIDList = [f"{STUDY}.1.1", f"{STUDY}.1.2"]
        return [(counts(0xFF00, 2, completed=1, failed=0, warning=0), None), (final, failed)]

    with scripted_move_pacs(script) as node, Connection.open(node, ALL) as conn:
        identifier = build_retrieve_identifier(Root.STUDY, Level.STUDY, {"StudyInstanceUID": STUDY})
        result = conn.move(identifier, "STORESCP", message_id=4711)
    assert seen == {"message_id": 4711, "destination": "STORESCP"}
    assert result.message_id == 4711
    assert [r.status for r in result.responses] == [0xFF00, 0xA702]
    assert result.responses[0].remaining == 2
    final = result.final
    assert final.category is StatusCategory.FAILURE
    assert (final.completed, final.failed, final.warning) == (1, 2, 0)
    assert final.error_comment == "disk full"
    assert final.failed_sop_instance_uids == (f"{STUDY}.1.1", f"{STUDY}.1.2")
    assert "Out of resources" in final.description


def test_final_counts_left_out_are_reported_as_omitted() -> None:
    def script(req: Any) -> list[tuple[Dataset, Dataset | None]]:
        return [(counts(0x0000), None)]

    with scripted_move_pacs(script) as node, Connection.open(node, ALL) as conn:
        identifier = build_retrieve_identifier(Root.STUDY, Level.STUDY, {"StudyInstanceUID": STUDY})
        result = conn.move(identifier, "STORESCP")
    assert result.ok
    assert result.counts_omitted == ["completed", "failed", "warning"]
    assert result.count("completed") == 0


def test_message_ids_increase_and_skip_zero() -> None:
    ids: list[int] = []

    def handle_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        ids.append(event.request.MessageID)
        yield 0x0000, None

    with fake_pacs([(evt.EVT_C_FIND, handle_find)]) as node, Connection.open(node, FIND) as conn:
        conn._next_message_id = 0xFFFF
        conn.find(study_query())
        conn.find(study_query())
    assert ids == [0xFFFF, 1]


def test_operation_without_an_accepted_context_is_refused_before_sending() -> None:
    with fake_pacs([]) as node, Connection.open(node, FIND) as conn:
        identifier = build_retrieve_identifier(Root.STUDY, Level.STUDY, {"StudyInstanceUID": STUDY})
        with pytest.raises(PresentationContextError, match="accepted no presentation context"):
            conn.move(identifier, "STORESCP")


def test_invalid_identifier_is_refused_before_anything_is_sent() -> None:
    calls: list[int] = []

    def handle_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        calls.append(1)
        yield 0x0000, None

    bad = Dataset()
    bad.QueryRetrieveLevel = "SERIES"
    bad.Modality = "CT"
    with fake_pacs([(evt.EVT_C_FIND, handle_find)]) as node, Connection.open(node, FIND) as conn:
        with pytest.raises(InvalidIdentifier, match="StudyInstanceUID"):
            conn.find(bad)
        assert calls == []
        # Sent as is when asked explicitly: the peer decides.
        assert conn.find(bad, validate=False).ok
        assert calls == [1]


def test_too_many_presentation_contexts_are_refused() -> None:
    from qrfarm.dicom import storage_contexts

    contexts = storage_contexts([f"1.2.826.0.1.3680043.10.9.{n}" for n in range(129)])
    with pytest.raises(PresentationContextError, match="at most 128"):
        Connection.open(__import__("qrfarm.dicom").dicom.Node("X", "127.0.0.1", 1), contexts)
