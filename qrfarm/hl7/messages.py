"""Reading an order or scheduling message, and writing its acknowledgement.

Supported: ORM^O01 and OMI^O23 (orders) and SIU^S12 (a new appointment).
What a prefetch needs is read from where IHE Scheduled Workflow puts it:
the patient from PID-3 (every repetition: the ID, CX.1, and its assigning
authority, CX.4, by namespace ID or universal ID), the accession number from
IPC-1, OBR-18 or ORC-3, the Study Instance UID from IPC-3 or ZDS-1, the order
control from ORC-1 (none, as in SIU: NW) and the order from its placer or
filler order number.
Any other field is read by its place (``Trigger.lookup("PV1-2")``) for the
conditions of a rule.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

import hl7
from hl7.exceptions import ParseException

from qrfarm.errors import UnusableHl7Message
from qrfarm.workflow.conditions import PLACE
from qrfarm.workflow.identity import PatientIdentifier

SUPPORTED = frozenset({"ORM^O01", "OMI^O23", "SIU^S12"})
# PID-3 repetitions read at most (a patient has a few identifiers, not hundreds).
MAX_IDENTIFIERS = 20
ACCEPT, ERROR, REJECT = "AA", "AE", "AR"


@dataclass(frozen=True)
class Trigger:
    message: hl7.Message
    message_type: str
    control_id: str
    sending_application: str
    patient_id: str
    accession_number: str | None
    study_instance_uid: str | None
    # MSH-4, and a digest of the whole message but MSH-7 (its time, which a
    # sender may renew when it sends the same message again).
    sending_facility: str = ""
    digest: str = ""
    # Every PID-3 identifier with its authority (the first is ``patient_id``).
    identifiers: tuple[PatientIdentifier, ...] = ()
    # ORC-1, upper case; NW for a message without ORC (a new appointment).
    order_control: str = "NW"
    # The order it is about: the placer order number (ORC-2, OBR-2), else the
    # filler's (ORC-3, OBR-3), else the accession.
    order_number: str | None = None

    @property
    def sender(self) -> str:
        """MSH-3^MSH-4: who sent it, as the audit trail names it."""
        return f"{self.sending_application}^{self.sending_facility}".rstrip("^")

    @property
    def order_key(self) -> str | None:
        """Who sent it and which order: what a later XO, CA or DC names again."""
        if not self.order_number:
            return None
        return f"{self.sender}:{self.order_number}"[:255]

    def lookup(self, place: str) -> str | None:
        """The value at an HL7 place (SEG-field[.component[.subcomponent]]),
        first repetition; None when absent or empty."""
        match = PLACE.match(place)
        if match is None:
            return None
        path = f"{match['segment']}.F{match['field']}.R1.C{match['component'] or 1}"
        if match["sub"]:
            path += f".S{match['sub']}"
        try:
            value = str(self.message[path]).strip()
        except (KeyError, IndexError, ValueError):
            return None
        return value or None


def content_digest(text: str) -> str:
    """SHA-256 of a message's segments (CR-separated, as read), MSH-7 left out."""
    segments = [s.rstrip() for s in text.split("\r") if s.strip()]
    if segments and segments[0].startswith("MSH") and len(segments[0]) > 3:
        fields = segments[0].split(segments[0][3])
        if len(fields) > 6:
            fields[6] = ""
        segments[0] = segments[0][3].join(fields)
    return hashlib.sha256("\r".join(segments).encode("utf-8")).hexdigest()


def _field(message: hl7.Message, segment: str, field: int, component: int = 1) -> str | None:
    """The first repetition's component of a field, or None when absent or empty."""
    try:
        value = str(message[f"{segment}.F{field}.R1.C{component}"]).strip()
    except (KeyError, IndexError):
        return None
    return value or None


def read(text: str) -> Trigger:
    """The trigger a message carries; UnusableHl7Message (with AR or AE) otherwise."""
    # Segments end in CR; some senders use CR LF or LF.
    text = text.replace("\r\n", "\r").replace("\n", "\r")
    if not text.startswith("MSH"):
        raise UnusableHl7Message(REJECT, "not an HL7 v2 message: it does not begin with MSH")
    try:
        message = hl7.parse(text)
        msh = message.segment("MSH")
    except (ParseException, KeyError, IndexError, ValueError) as exc:
        raise UnusableHl7Message(REJECT, f"not a parseable HL7 v2 message: {exc}") from exc
    # A bare "ACK" (no trigger event) must be refused, not crash the read.
    code = _field(message, "MSH", 9, 1) or ""
    event = _field(message, "MSH", 9, 2) or ""
    message_type = f"{code}^{event}"
    control_id = str(msh(10)).strip() if len(msh) > 10 else ""
    if not control_id:
        raise UnusableHl7Message(REJECT, "MSH-10 (message control ID) is empty")
    if message_type not in SUPPORTED:
        raise UnusableHl7Message(
            REJECT,
            f"message type {message_type} is not supported (only {', '.join(sorted(SUPPORTED))})",
        )
    identifiers = _identifiers(message)
    if not identifiers:
        raise UnusableHl7Message(ERROR, "PID-3 (patient identifier list) is missing or empty")
    order_control = (_field(message, "ORC", 1) or "NW").upper()
    accession = _field(message, "IPC", 1) or _field(message, "OBR", 18) or _field(message, "ORC", 3)
    study_uid = _field(message, "IPC", 3) or _field(message, "ZDS", 1)
    return Trigger(
        message=message,
        message_type=message_type,
        control_id=control_id,
        sending_application=str(msh(3)).strip() if len(msh) > 3 else "",
        patient_id=identifiers[0].id,
        accession_number=accession,
        study_instance_uid=study_uid,
        sending_facility=str(msh(4)).strip() if len(msh) > 4 else "",
        digest=content_digest(text),
        identifiers=identifiers,
        order_control=order_control[:2],
        order_number=(
            _field(message, "ORC", 2)
            or _field(message, "OBR", 2)
            or _field(message, "ORC", 3)
            or _field(message, "OBR", 3)
            or accession
        ),
    )


def _part(message: hl7.Message, path: str) -> str | None:
    try:
        value = str(message[path]).strip()
    except (KeyError, IndexError, ValueError):
        return None
    return value or None


def _identifiers(message: hl7.Message) -> tuple[PatientIdentifier, ...]:
    """Every PID-3 repetition: CX.1 the ID, CX.4 its authority (HD: namespace ID,
    universal ID). A repetition without an ID is skipped; a bad one refused."""
    found = []
    for repetition in range(1, MAX_IDENTIFIERS + 1):
        base = f"PID.F3.R{repetition}"
        try:
            message[f"{base}.C1"]
        except (KeyError, IndexError):
            break
        patient_id = _part(message, f"{base}.C1")
        if not patient_id:
            continue
        issuer = _part(message, f"{base}.C4.S1") or _part(message, f"{base}.C4")
        try:
            found.append(
                PatientIdentifier(
                    id=patient_id, issuer=issuer, universal_id=_part(message, f"{base}.C4.S2")
                )
            )
        except ValueError as exc:
            raise UnusableHl7Message(
                ERROR, f"PID-3 repetition {repetition} is not a usable identifier: {_reason(exc)}"
            ) from exc
    return tuple(found)


def _reason(exc: ValueError) -> str:
    """A validation error's complaint, without the value it quotes (a patient ID)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors())
    return type(exc).__name__


def acknowledge(trigger: Trigger, code: str, text: str | None = None) -> str:
    """An ACK for a message that parsed: MSA-1 the code, MSA-3 the text, escaped
    with the message's own delimiters (MSH-1 and MSH-2 are copied into the ACK)."""
    ack = trigger.message.create_ack(ack_code=code, application="QRFARM")
    if text:
        msh = trigger.message.segment("MSH")
        ack.segment("MSA").assign_field(_escape(text, str(msh(1)) + str(msh(2))), 3)
    return str(ack)


def acknowledge_raw(text: str, code: str, reason: str) -> str:
    """An ACK for a message too broken to use its own MSH: built from what can be read."""
    control_id = ""
    if text.startswith("MSH") and len(text) > 4:
        separator = text[3]
        fields = text.split("\r", 1)[0].split(separator)
        control_id = fields[9] if len(fields) > 9 else ""
    now = dt.datetime.now(dt.UTC)
    # Our own control ID for the ACK; MSA-2 names the message answered, whole.
    ack_id = "QRF" + now.strftime("%Y%m%d%H%M%S%f")
    return (
        f"MSH|^~\\&|QRFARM||||{now:%Y%m%d%H%M%S}||ACK|{ack_id}|P|2.5\r"
        f"MSA|{code}|{_escape(control_id[:199])}|{_escape(reason[:200])}\r"
    )


def _escape(text: str, delimiters: str = "|^~\\&") -> str:
    """HL7 escape sequences for the delimiters in use (MSH-1 then MSH-2), so a
    reason cannot break the ACK."""
    padded = delimiters + "|^~\\&"[len(delimiters) :]
    field, component, repetition, escape, subcomponent = tuple(padded[:5])
    text = text.replace(escape, f"{escape}E{escape}")
    for char, name in ((field, "F"), (component, "S"), (repetition, "R"), (subcomponent, "T")):
        text = text.replace(char, f"{escape}{name}{escape}")
    return text.replace("\r", " ").replace("\n", " ")
