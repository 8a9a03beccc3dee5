"""``qrfarm hl7``: an MLLP listener that turns order and scheduling messages into prefetches.

Each message is answered before the next is read on that connection (the
original acknowledgement mode): ACK (AA) once the prefetch is recorded, a
NAK with the reason otherwise: AR (application reject) for a message that
cannot be processed at all (garbled, unsupported type), AE (application
error) for an error in its content or in acting on it here (no patient ID,
no rule configured, database unreachable). The message
control ID becomes the prefetch's external reference, so a message resent
after a lost ACK starts nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

from hl7.mllp import HL7StreamReader, HL7StreamWriter, InvalidBlockError, start_hl7_server
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.config import Settings
from qrfarm.errors import PermanentError, ResentWithOtherContent, UnusableHl7Message
from qrfarm.jobs.dispatch import Dispatcher
from qrfarm.jobs.submit import SubmitRules
from qrfarm.observability.metrics import HL7_MESSAGES
from qrfarm.workflow import audit, orders, prefetch
from qrfarm.workflow import rules as prefetch_rules
from qrfarm.workflow.audit import FAILED, REFUSED, SUCCESS

from .guards import Guards
from .messages import ACCEPT, ERROR, REJECT, Trigger, acknowledge, acknowledge_raw, read

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 1 << 20


def _ack_code(reply: str) -> str:
    """MSA-1 of an acknowledgement we wrote."""
    for segment in reply.split("\r"):
        if segment.startswith("MSA") and len(segment) > 4:
            return segment[4:].split(segment[3], 1)[0]
    return "unknown"


def _host(peer: object) -> str | None:
    """The address of a peer as asyncio gives it (host, port[, ...])."""
    return str(peer[0]) if isinstance(peer, tuple) and peer else None


def decode(block: bytes) -> str:
    """UTF-8 when it is, else Latin-1 (the usual ISO IR 100 of European sites)."""
    try:
        return block.decode("utf-8")
    except UnicodeDecodeError:
        return block.decode("latin-1")


@dataclass
class Hl7Service:
    settings: Settings
    sessions: sessionmaker[Session]
    dispatcher: Dispatcher
    rules: SubmitRules

    def rule_for(self, message_type: str) -> str | None:
        return self.settings.hl7_rules.get(message_type) or self.settings.hl7_default_rule

    def process(self, text: str, peer: str | None = None) -> str:
        """The acknowledgement for one message; starts its prefetch when it can.

        Every message answered is written to the audit trail: the sender
        (MSH-3^MSH-4) and its address ``peer``, the patient, the outcome.
        """
        trigger: Trigger | None = None
        try:
            trigger = read(text)
            reply, outcome, detail = self._act(trigger, peer)
        except UnusableHl7Message as exc:
            log.warning("HL7 message refused (%s): %s", exc.code, exc.reason)
            reply, outcome, detail = acknowledge_raw(text, exc.code, exc.reason), FAILED, exc.reason
        self._audit(trigger, peer, outcome, detail)
        return reply

    def _order(self, trigger: Trigger, peer: str | None) -> orders.Outcome | str:
        """What the order's control code asks (qrfarm.workflow.orders); a text
        when it cannot be done (answered AE)."""
        control = trigger.order_control
        order_key = (
            None if trigger.order_key is None else orders.bound_order_key(peer, trigger.order_key)
        )
        if control in orders.CANCELLING:
            if order_key is None:
                return "nothing to cancel: the message names no order (ORC-2, ORC-3, accession)"
            reason = f"cancelled by order control {control}"
            return orders.Outcome(
                cancelled=orders.cancel_order(self.sessions, order_key, trigger.identifiers, reason)
            )
        if control not in prefetch_rules.STARTING_ORDER_CONTROLS:
            return orders.Outcome(ignored=f"order control {control} acknowledged, nothing done")
        rule_name = self.rule_for(trigger.message_type)
        if rule_name is None:
            return f"no prefetch rule is configured for {trigger.message_type}"
        with self.sessions() as db:
            rule = prefetch_rules.load_rule(db, rule_name)
        if control not in rule.order_controls:
            return orders.Outcome(
                ignored=f"order control {control} acknowledged: rule {rule_name} does not act on it"
            )
        skipped = orders.skipped_by(rule, trigger.lookup)
        if skipped is not None:
            return orders.Outcome(ignored=skipped)
        return orders.start_or_update(
            self.sessions,
            prefetch.PrefetchRequest(
                patient_id=trigger.patient_id,
                rule=orders.selection(rule, trigger.lookup),
                rule_name=rule_name,
                current_accession=trigger.accession_number,
                current_study_uid=trigger.study_instance_uid,
                external_reference=(
                    f"{prefetch.HL7_REFERENCE_PREFIX}{trigger.sending_application}:{trigger.control_id}"[
                        :255
                    ]
                ),
                trigger_digest=trigger.digest,
                identifiers=trigger.identifiers,
                order_key=order_key,
            ),
            self.dispatcher,
            self.rules,
        )

    def _act(self, trigger: Trigger, peer: str | None) -> tuple[str, str, str]:
        """The acknowledgement, the audit outcome and what the audit row says."""
        try:
            outcome = self._order(trigger, peer)
        except ResentWithOtherContent as exc:
            # The control ID of an order already taken, with other content: a
            # sender's bug or a forgery; neither replaces the order.
            log.warning("HL7 %s %s: %s", trigger.message_type, trigger.control_id, exc)
            return acknowledge(trigger, ERROR, str(exc)), REFUSED, str(exc)
        except PermanentError as exc:
            log.warning("HL7 %s %s: %s", trigger.message_type, trigger.control_id, exc)
            return acknowledge(trigger, ERROR, str(exc)), FAILED, str(exc)
        except SQLAlchemyError as exc:
            log.error("HL7 %s: database error %s", trigger.control_id, type(exc).__name__)
            reason = "the database is not available; send again later"
            return acknowledge(trigger, ERROR, reason), FAILED, reason
        if isinstance(outcome, str):
            return acknowledge(trigger, ERROR, outcome), FAILED, outcome
        # The prefetch row holds the patient; the log names only the message.
        text = outcome.text()
        log.info(
            "HL7 %s %s %s: %s",
            trigger.message_type,
            trigger.control_id,
            trigger.order_control,
            text,
        )
        return acknowledge(trigger, ACCEPT, text), SUCCESS, text

    def _audit(self, trigger: Trigger | None, peer: str | None, outcome: str, detail: str) -> None:
        if trigger is not None:
            actor = audit.Actor("hl7", trigger.sender or "unnamed sender", peer)
            what = f"{trigger.message_type} {trigger.control_id}: {detail}"
            patient, study = trigger.patient_id, trigger.study_instance_uid
        else:
            actor = audit.Actor("hl7", "unreadable message", peer)
            what, patient, study = detail, None, None
        event = audit.Event(
            "hl7.order", audit.CREATE, outcome, patient_key=patient, study_uid=study, detail=what
        )
        try:
            audit.write(self.sessions, actor, event)
        except SQLAlchemyError as exc:
            log.error("HL7 audit row not written: %s", type(exc).__name__)

    async def serve_connection(self, reader: HL7StreamReader, writer: HL7StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            while True:
                try:
                    # Idle: nothing, or no whole message, for this long.
                    async with asyncio.timeout(self.settings.hl7_idle_timeout_s):
                        block = await reader.readblock()
                except TimeoutError:
                    log.info(
                        "HL7 connection from %s closed: idle for %g s",
                        peer,
                        self.settings.hl7_idle_timeout_s,
                    )
                    return
                except asyncio.IncompleteReadError:
                    return  # the sender closed the connection
                except (InvalidBlockError, ValueError) as exc:
                    reply = acknowledge_raw("", REJECT, f"not an MLLP block: {exc}")
                else:
                    reply = await asyncio.to_thread(self.process, decode(block), _host(peer))
                HL7_MESSAGES.labels(_ack_code(reply)).inc()
                writer.writeblock(reply.encode("utf-8"))
                await writer.drain()
        except ConnectionError as exc:
            log.info("HL7 connection from %s ended: %s", peer, exc)
        finally:
            writer.close()

    async def run(self, ready: asyncio.Event | None = None) -> None:
        connections: set[asyncio.Task[None]] = set()
        guards = Guards(self.settings)  # bad allow-list or TLS files: no start

        async def serve(reader: HL7StreamReader, writer: HL7StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            connections.add(task)
            try:
                async with guards.admitted(writer) as admitted:
                    if admitted:
                        await self.serve_connection(reader, writer)
            except asyncio.CancelledError:
                pass  # stopping: a message cut off gets no ACK and is sent again
            finally:
                connections.discard(task)

        server = await start_hl7_server(
            serve, self.settings.hl7_host, self.settings.hl7_port, limit=MAX_MESSAGE_BYTES
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        log.info("HL7 listener on %s:%d", self.settings.hl7_host, self.settings.hl7_port)
        if ready is not None:
            ready.set()
        async with server:
            await stop.wait()
            # Senders keep their connections open; since Python 3.12 leaving
            # the server's context waits for them all, so end them here.
            server.close()
            for task in list(connections):
                task.cancel()
            await asyncio.gather(*connections, return_exceptions=True)
        log.info("HL7 listener stopped")
