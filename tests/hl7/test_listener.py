"""``qrfarm hl7`` as its own process, spoken to over MLLP as a RIS would.

Shown: an ORM^O01 is acknowledged (AA) once its prefetch is recorded, with
a STUDY-level find job per node of the configured rule, in the rule's order;
the same message sent again (same MSH-10, as after a lost ACK) is accepted
and starts nothing more; a garbled block, an unsupported type and a type
without a rule are answered with a NAK (AR, AR, AE) and start nothing, and
the connection still answers the next message; SIGTERM stops the listener
with exit status 0, also while a sender keeps its connection open.

No worker runs, so the find jobs stay queued (the embedded filesystem broker
in data_dir holds their tasks).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import hl7
import pytest
from hl7.mllp import open_hl7_connection
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.config import Settings
from qrfarm.hl7.listener import Hl7Service
from qrfarm.jobs.nodes import NodeSpec, upsert_node
from qrfarm.jobs.submit import SubmitRules
from qrfarm.models import (
    AuditEvent,
    Job,
    JobKind,
    NodeRecord,
    Prefetch,
    PrefetchState,
    make_engine,
    session_factory,
    upgrade,
)
from qrfarm.workflow.rules import Rule, save_rule
from tests.jobs.conftest import Sent
from tests.peers.ports import LOCALHOST, accepts_connections, free_port, wait_for_port

from .test_messages import message, msh, obr

RULE = "priors"
NODES = ("pacs-a", "pacs-b")
ANSWER_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


@dataclass
class Listener:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    sessions: sessionmaker[Session]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def listener_process(tmp: Path) -> Iterator[Listener]:
    """``qrfarm -v hl7`` on a free port, its database migrated and holding the
    nodes and the rule "priors" (for ORM^O01 only); killed afterwards if still up."""
    url = f"sqlite:///{tmp / 'q.db'}"
    upgrade(url)
    engine: Engine = make_engine(url)
    sessions = session_factory(engine)
    with sessions() as session, session.begin():
        for number, name in enumerate(NODES):
            upsert_node(session, NodeSpec(name, f"PACS{number}", LOCALHOST, 11112 + number))
        save_rule(session, RULE, Rule(nodes=list(NODES), modalities=["CT"], max_studies=3))
    port = free_port()
    env = {
        **os.environ,
        "QRFARM_DATABASE_URL": url,
        "QRFARM_DATA_DIR": str(tmp / "data"),
        "QRFARM_ALLOWED_HOSTS": LOCALHOST,
        "QRFARM_HL7_HOST": LOCALHOST,
        "QRFARM_HL7_PORT": str(port),
        "QRFARM_HL7_RULES": json.dumps({"ORM^O01": RULE}),
        "QRFARM_CONFIG": str(tmp / "none.toml"),  # absent: no stray qrfarm.toml is read
    }
    env.pop("QRFARM_HL7_DEFAULT_RULE", None)
    env.pop("QRFARM_BROKER_URL", None)
    log = tmp / "hl7.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "qrfarm.cli", "-v", "hl7"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )
    listener = Listener(process, port, log, sessions)
    try:
        if not wait_for_port(port, timeout=60, still_running=lambda: process.poll() is None):
            pytest.fail(f"qrfarm hl7 did not listen on {port}:\n{listener.log_text()}")
        yield listener
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        engine.dispose()


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listener]:
    """One listener for the exchanges below (each uses its own patient and control IDs)."""
    with listener_process(tmp_path_factory.mktemp("hl7")) as running:
        yield running


# --- speaking MLLP -----------------------------------------------------------


class NoAnswer(AssertionError):
    """The listener closed the connection instead of acknowledging."""


async def _exchange(port: int, blocks: list[bytes]) -> list[str]:
    """Each block in turn on one connection, waiting for its answer before the next."""
    reader, writer = await open_hl7_connection(LOCALHOST, port)
    answers = []
    try:
        for block in blocks:
            writer.write(block)
            await writer.drain()
            try:
                async with asyncio.timeout(ANSWER_TIMEOUT_S):
                    answers.append((await reader.readblock()).decode("utf-8"))
            except asyncio.IncompleteReadError as exc:
                raise NoAnswer(
                    f"connection closed without an acknowledgement of {block!r}"
                ) from exc
    finally:
        writer.close()
        await writer.wait_closed()
    return answers


def mllp(text: str | bytes) -> bytes:
    """A message in its MLLP block: <VT> message <FS><CR>."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return b"\x0b" + data + b"\x1c\r"


def send(listener: Listener, *messages: str | bytes) -> list[hl7.Message]:
    """The acknowledgements (parsed) of messages sent in turn on one connection:
    a text is sent in its MLLP block, bytes exactly as they are."""
    blocks = [m if isinstance(m, bytes) else mllp(m) for m in messages]
    try:
        answers = asyncio.run(_exchange(listener.port, blocks))
    except NoAnswer as exc:
        raise NoAnswer(f"{exc}\n--- listener log ---\n{listener.log_text()}") from exc
    return [hl7.parse(answer) for answer in answers]


def msa(ack: hl7.Message) -> tuple[str, str, str]:
    """MSA-1 (code), MSA-2 (control ID answered) and MSA-3 (the text, unescaped)."""
    segment = ack.segment("MSA")
    text = ack.unescape(str(segment(3))) if len(segment) > 3 else ""
    return str(segment(1)), str(segment(2)), text


def orm(control_id: str, patient_id: str, accession: str) -> str:
    return message(
        msh("ORM^O01", control_id, version="2.3.1"),
        f"PID|1||{patient_id}^^^HOSP^MR||DOE^JOHN||19600101|M",
        "PV1|1|O",
        "ORC|NW|PLACER1|FILLER1",
        obr(accession),
    )


# --- what the database holds -------------------------------------------------


def prefetches_of(listener: Listener, patient_id: str) -> list[Prefetch]:
    with listener.sessions() as session:
        return list(
            session.scalars(
                select(Prefetch).where(Prefetch.patient_id == patient_id).order_by(Prefetch.id)
            )
        )


def count(listener: Listener, model: type[Prefetch] | type[Job]) -> int:
    with listener.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def child_jobs(listener: Listener, prefetch_id: int) -> list[tuple[Job, str]]:
    with listener.sessions() as session:
        rows = session.execute(
            select(Job, NodeRecord.name)
            .join(NodeRecord, Job.node_id == NodeRecord.id)
            .where(Job.prefetch_id == prefetch_id)
            .order_by(Job.id)
        )
        return [(job, name) for job, name in rows.all()]


@contextmanager
def starts_nothing(listener: Listener) -> Iterator[None]:
    before = count(listener, Prefetch), count(listener, Job)
    yield
    assert (count(listener, Prefetch), count(listener, Job)) == before


# --- orders --------------------------------------------------------------------


def test_an_orm_is_accepted_and_starts_one_prefetch_with_a_find_per_rule_node(
    listener: Listener,
) -> None:
    (ack,) = send(listener, orm("ORD-1001", "PAT-1001", "ACC-1001"))
    code, answered, text = msa(ack)
    assert (code, answered) == ("AA", "ORD-1001"), text

    (prefetch,) = prefetches_of(listener, "PAT-1001")
    assert text == f"prefetch {prefetch.id}"
    assert prefetch.current_accession == "ACC-1001"
    assert prefetch.rule_name == RULE
    assert prefetch.state is PrefetchState.SEARCHING
    assert prefetch.external_reference == "hl7:RIS:ORD-1001"
    jobs = child_jobs(listener, prefetch.id)
    assert [name for _, name in jobs] == list(NODES)
    for job, _ in jobs:
        assert job.kind is JobKind.FIND
        assert job.level == "STUDY"
        assert job.identifier["00100020"]["Value"] == ["PAT-1001"]
    # The patient's ID, name and birth date stay out of the listener's log.
    logged = listener.log_text()
    assert "ORD-1001" in logged
    assert not any(value in logged for value in ("PAT-1001", "DOE", "19600101"))


def test_the_same_message_sent_again_is_accepted_and_starts_nothing_more(
    listener: Listener,
) -> None:
    text = orm("ORD-2001", "PAT-2001", "ACC-2001")
    (first,) = send(listener, text)
    assert msa(first)[:2] == ("AA", "ORD-2001")
    (prefetch,) = prefetches_of(listener, "PAT-2001")
    with starts_nothing(listener):
        # Resent on a new connection, as after an ACK lost with the old one,
        # then once more on the same connection.
        again = send(listener, text, text)
    assert [msa(ack) for ack in again] == [msa(first)] * 2
    assert [p.id for p in prefetches_of(listener, "PAT-2001")] == [prefetch.id]
    assert len(child_jobs(listener, prefetch.id)) == len(NODES)


# --- refusals ------------------------------------------------------------------


@pytest.mark.parametrize(
    "block",
    [
        # Not UTF-8 either: decoded as Latin-1, then refused.
        pytest.param(mllp(b"\x8f\x02random text, not HL7 at all\r"), id="garbage-in-MLLP-block"),
        pytest.param(mllp("MSH|\r"), id="bare-MSH"),
        pytest.param(b"no start block here\x1c\r", id="no-MLLP-start-block"),
    ],
)
def test_a_garbled_message_gets_ar_and_starts_nothing(listener: Listener, block: bytes) -> None:
    with starts_nothing(listener):
        nak, next_answer = send(listener, block, SIU_WITHOUT_RULE)
    code, answered, text = msa(nak)
    assert (code, answered) == ("AR", ""), text
    assert "HL7" in text or "MLLP" in text
    # The connection survives the NAK: the next message on it is answered.
    assert msa(next_answer)[:2] == ("AE", "SIU-5001")


def test_an_unsupported_message_type_gets_ar_and_starts_nothing(listener: Listener) -> None:
    adt = message(
        msh("ADT^A01^ADT_A01", "ADT-4001"),
        "EVN|A01|20240102030405",
        "PID|1||PAT-4001^^^HOSP^MR||DOE^JOHN",
        "PV1|1|I",
    )
    with starts_nothing(listener):
        (nak,) = send(listener, adt)
    code, answered, text = msa(nak)
    assert (code, answered) == ("AR", "ADT-4001"), text
    assert "ADT^A01" in text


SIU_WITHOUT_RULE = message(
    msh("SIU^S12^SIU_S12", "SIU-5001"),
    "SCH|APPT-5001|FILL-5001|||||ROUTINE|NORMAL|30|MIN",
    "PID|1||PAT-5001^^^HOSP^MR||ROE^RICHARD",
    "RGS|1|A",
    "AIS|1|A|CTCHEST^CT chest",
)


def test_a_siu_without_a_configured_rule_gets_ae_naming_the_missing_rule(
    listener: Listener,
) -> None:
    with starts_nothing(listener):
        (nak,) = send(listener, SIU_WITHOUT_RULE)
    code, answered, text = msa(nak)
    assert (code, answered) == ("AE", "SIU-5001"), text
    assert "rule" in text
    assert "SIU^S12" in text
    assert prefetches_of(listener, "PAT-5001") == []


def test_a_message_type_without_trigger_event_gets_ar_not_a_dropped_connection(
    listener: Listener,
) -> None:
    """A stray ACK (MSH-9 "ACK", no event) must be answered like any other
    unsupported type, not end the connection without an answer."""
    stray = message("MSH|^~\\&|RIS|HOSP|QRFARM|PACS|20240102030405||ACK|ACK-6001|P|2.5", "MSA|AA|X")
    with starts_nothing(listener):
        (nak,) = send(listener, stray)
    code, answered, text = msa(nak)
    assert (code, answered) == ("AR", "ACK-6001"), text


# --- stopping ------------------------------------------------------------------


def stopped(listener: Listener) -> int:
    listener.process.send_signal(signal.SIGTERM)
    try:
        return listener.process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"qrfarm hl7 still running {STOP_TIMEOUT_S:.0f} s after SIGTERM:\n{listener.log_text()}"
        )


def test_sigterm_stops_the_listener_with_exit_status_0(tmp_path: Path) -> None:
    with listener_process(tmp_path) as running:
        (ack,) = send(running, orm("ORD-7001", "PAT-7001", "ACC-7001"))
        assert msa(ack)[0] == "AA"
        assert stopped(running) == 0, running.log_text()
        assert "HL7 listener stopped" in running.log_text()
        assert not accepts_connections(running.port)


def test_sigterm_stops_the_listener_while_a_sender_keeps_its_connection_open(
    tmp_path: Path,
) -> None:
    """MLLP senders keep their connection between messages: one left open,
    idle after its last ACK, must not hold the listener up."""
    with (
        listener_process(tmp_path) as running,
        socket.create_connection((LOCALHOST, running.port), timeout=ANSWER_TIMEOUT_S) as sender,
    ):
        sender.sendall(mllp(SIU_WITHOUT_RULE))
        answer = b""
        while not answer.endswith(b"\x1c\r"):
            chunk = sender.recv(4096)
            assert chunk, f"connection closed without an acknowledgement: {answer!r}"
            answer += chunk
        # The listener now serves this connection, waiting for its next message.
        assert msa(hl7.parse(answer[1:-2].decode()))[0] == "AE"
        assert stopped(running) == 0, running.log_text()


# --- the audit trail and resends -------------------------------------------------


def audit_rows(listener: Listener, patient_id: str) -> list[AuditEvent]:
    with listener.sessions() as session:
        return list(
            session.scalars(
                select(AuditEvent)
                .where(AuditEvent.patient_key == patient_id)
                .order_by(AuditEvent.id)
            )
        )


def test_an_order_is_recorded_in_the_audit_trail_with_sender_and_address(
    listener: Listener,
) -> None:
    (ack,) = send(listener, orm("ORD-4001", "PAT-4001", "ACC-4001"))
    assert msa(ack)[0] == "AA"
    (prefetch,) = prefetches_of(listener, "PAT-4001")
    (row,) = audit_rows(listener, "PAT-4001")
    assert (row.action, row.action_code, row.outcome) == ("hl7.order", "C", "success")
    assert (row.actor_kind, row.actor, row.source) == ("hl7", "RIS^HOSP", LOCALHOST)
    assert row.detail is not None
    assert "ORD-4001" in row.detail and f"prefetch {prefetch.id}" in row.detail


def test_a_resend_with_other_content_gets_ae_and_an_audit_row_and_changes_nothing(
    listener: Listener,
) -> None:
    original = orm("ORD-5001", "PAT-5001", "ACC-5001")
    (first,) = send(listener, original)
    assert msa(first)[0] == "AA"
    (prefetch,) = prefetches_of(listener, "PAT-5001")
    # Only the time of the message (MSH-7) differs: still the same order.
    (retimed,) = send(listener, original.replace("20240102030405", "20240102030999"))
    assert msa(retimed) == msa(first)
    with starts_nothing(listener):
        # A real order's sender and control ID, another patient.
        (forged,) = send(listener, orm("ORD-5001", "PAT-5002", "ACC-5001"))
    code, answered, text = msa(forged)
    assert (code, answered) == ("AE", "ORD-5001")
    assert "ORD-5001" in text and "different content" in text
    assert [p.id for p in prefetches_of(listener, "PAT-5001")] == [prefetch.id]
    assert prefetches_of(listener, "PAT-5002") == []
    (row,) = audit_rows(listener, "PAT-5002")
    assert (row.action, row.outcome, row.actor) == ("hl7.order", "refused", "RIS^HOSP")
    assert row.detail is not None and "different content" in row.detail
    assert "PAT-5002" not in listener.log_text()


# --- order control and rule conditions -------------------------------------------


def order(
    control_id: str,
    patient_id: str,
    *,
    control: str = "NW",
    placer: str = "PLACER1",
    patient_class: str = "O",
    authority: str | None = "HOSP",
) -> str:
    pid3 = patient_id if authority is None else f"{patient_id}^^^{authority}^MR"
    return message(
        msh("ORM^O01", control_id, version="2.3.1"),
        f"PID|1||{pid3}||DOE^JOHN||19600101|M",
        f"PV1|1|{patient_class}",
        f"ORC|{control}|{placer}|FILLER1",
        obr(f"ACC-{control_id}"),
    )


@contextmanager
def rule_changed(listener: Listener, **changes: object) -> Iterator[None]:
    """The listener's rule with ``changes`` for the duration (it reads the rule per order)."""
    with listener.sessions() as session, session.begin():
        save_rule(session, RULE, Rule(nodes=list(NODES), modalities=["CT"], **changes))  # type: ignore[arg-type]
    try:
        yield
    finally:
        with listener.sessions() as session, session.begin():
            save_rule(session, RULE, Rule(nodes=list(NODES), modalities=["CT"], max_studies=3))


def test_a_rule_condition_skips_inpatient_orders(listener: Listener) -> None:
    with rule_changed(listener, when=[{"field": "patient_class", "none_of": ["I"]}]):
        with starts_nothing(listener):
            (inpatient,) = send(
                listener, order("ORD-6001", "PAT-6001", placer="PL-6001", patient_class="I")
            )
        (outpatient,) = send(listener, order("ORD-6002", "PAT-6002", placer="PL-6002"))
    assert msa(inpatient) == (
        "AA",
        "ORD-6001",
        "not prefetched: the rule wants patient_class is none of I",
    )
    assert prefetches_of(listener, "PAT-6001") == []
    (prefetch,) = prefetches_of(listener, "PAT-6002")
    assert msa(outpatient) == ("AA", "ORD-6002", f"prefetch {prefetch.id}")


def test_orc_ca_cancels_the_order_prefetch_and_its_jobs(listener: Listener) -> None:
    (new,) = send(listener, order("ORD-7001", "PAT-7001", placer="PL-7001"))
    (prefetch,) = prefetches_of(listener, "PAT-7001")
    assert msa(new) == ("AA", "ORD-7001", f"prefetch {prefetch.id}")
    assert prefetch.order_key == "127.0.0.1|RIS^HOSP:PL-7001"
    # Another patient's cancel of the same order number touches nothing.
    (stray,) = send(listener, order("ORD-7002", "PAT-7999", control="CA", placer="PL-7001"))
    assert msa(stray) == ("AA", "ORD-7002", "no prefetch under way for this order")
    with starts_nothing(listener):
        (cancel,) = send(listener, order("ORD-7003", "PAT-7001", control="CA", placer="PL-7001"))
    assert msa(cancel) == ("AA", "ORD-7003", f"cancelled prefetch {prefetch.id}")
    (after,) = prefetches_of(listener, "PAT-7001")
    assert after.state is PrefetchState.CANCELLED
    assert after.error == "cancelled by order control CA"
    # No worker runs: the queued finds end at once.
    assert {job.state.value for job, _ in child_jobs(listener, prefetch.id)} == {"cancelled"}


def test_a_cancel_naming_the_patient_without_the_authority_touches_nothing(
    listener: Listener,
) -> None:
    send(listener, order("ORD-7101", "PAT-7101", placer="PL-7101"))
    # The same ID text with no assigning authority may be another patient.
    (stray,) = send(
        listener,
        order("ORD-7102", "PAT-7101", control="CA", placer="PL-7101", authority=None),
    )
    assert msa(stray) == ("AA", "ORD-7102", "no prefetch under way for this order")
    (still,) = prefetches_of(listener, "PAT-7101")
    assert still.state is not PrefetchState.CANCELLED


def test_only_the_address_that_sent_an_order_can_cancel_it(listener: Listener) -> None:
    """MSH-3/MSH-4 are what a sender writes: an order is bound to the address
    it came from too (peers here are labels; no traffic goes anywhere)."""
    settings = Settings(
        database_url="sqlite://",
        hl7_rules={"ORM^O01": RULE},
        allowed_hosts=[LOCALHOST],
    )
    service = Hl7Service(settings, listener.sessions, Sent(), SubmitRules.from_settings(settings))
    service.process(order("ORD-7201", "PAT-7201", placer="PL-7201"), "127.0.0.1")
    (prefetch,) = prefetches_of(listener, "PAT-7201")
    forged = service.process(
        order("ORD-7202", "PAT-7201", control="CA", placer="PL-7201"), "127.0.0.9"
    )
    assert msa(hl7.parse(forged)) == ("AA", "ORD-7202", "no prefetch under way for this order")
    assert prefetches_of(listener, "PAT-7201")[0].state is not PrefetchState.CANCELLED
    real = service.process(
        order("ORD-7203", "PAT-7201", control="CA", placer="PL-7201"), "127.0.0.1"
    )
    assert msa(hl7.parse(real)) == ("AA", "ORD-7203", f"cancelled prefetch {prefetch.id}")


def test_other_order_controls_are_acknowledged_and_ignored(listener: Listener) -> None:
    with starts_nothing(listener):
        (status,) = send(listener, order("ORD-8001", "PAT-8001", control="SC", placer="PL-8001"))
        # XO starts nothing unless the rule says so.
        (changed,) = send(listener, order("ORD-8002", "PAT-8001", control="XO", placer="PL-8001"))
    assert msa(status) == ("AA", "ORD-8001", "order control SC acknowledged, nothing done")
    assert msa(changed) == (
        "AA",
        "ORD-8002",
        f"order control XO acknowledged: rule {RULE} does not act on it",
    )


def test_xo_where_configured_replaces_a_changed_order(listener: Listener) -> None:
    with rule_changed(listener, order_controls=["NW", "XO"], modality_from="OBR-4.1"):
        (first,) = send(listener, order("ORD-9001", "PAT-9001", placer="PL-9001"))
        (old,) = prefetches_of(listener, "PAT-9001")
        # The same order, its procedure (and so its modality) changed.
        changed = order("ORD-9002", "PAT-9001", control="XO", placer="PL-9001")
        (xo,) = send(listener, changed.replace("CTCHEST^CT chest", "MR^MR knee"))
    old_row, new_row = prefetches_of(listener, "PAT-9001")
    assert old_row.id == old.id and old_row.state is PrefetchState.CANCELLED
    assert old_row.error == "replaced by a changed order"
    assert msa(xo) == ("AA", "ORD-9002", f"prefetch {new_row.id}")
    assert (old_row.rule["modalities"], new_row.rule["modalities"]) == (["CTCHEST"], ["MR"])
    assert msa(first)[0] == "AA"
