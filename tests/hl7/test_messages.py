"""Reading order and scheduling messages, and the acknowledgements written for them.

Shown: ORM^O01, OMI^O23 and SIU^S12 give the patient from PID-3 (every
identifier with its assigning authority, CX.4), the accession number and the
Study Instance UID from where IHE Scheduled Workflow puts them, the order
control (ORC-1) and order, and any field by its HL7 place; a message that cannot be used
is refused with AR or AE and a reason naming what is wrong; an ACK answers
the original control ID, and a reason carrying HL7 delimiters is escaped so
that the ACK still parses and the reason reads back unchanged.
"""

from __future__ import annotations

import hl7
import pytest

from qrfarm.errors import UnusableHl7Message
from qrfarm.hl7.messages import (
    ACCEPT,
    ERROR,
    REJECT,
    Trigger,
    acknowledge,
    acknowledge_raw,
    read,
)

DELIMITERS = "a|b^c~d&e\\f"
"""A reason carrying every standard HL7 delimiter: field, component,
repetition, subcomponent and escape."""


def message(*segments: str) -> str:
    """An HL7 v2 message: segments ended by CR, as the standard has it."""
    return "".join(f"{segment}\r" for segment in segments)


def msh(message_type: str, control_id: str, *, version: str = "2.5") -> str:
    return f"MSH|^~\\&|RIS|HOSP|QRFARM|PACS|20240102030405||{message_type}|{control_id}|P|{version}"


def obr(accession: str) -> str:
    """An OBR with OBR-18 (placer field 1, IHE's accession number) filled."""
    fields = ["OBR", "1", "PLACER1", "FILLER1", "CTCHEST^CT chest", *[""] * 13, accession]
    return "|".join(fields)


PID = "PID|1||PAT123^^^HOSP^MR~OTHER9^^^CITY^PI||DOE^JOHN||19600101|M"

ORM_O01 = message(
    msh("ORM^O01", "ORM0001", version="2.3.1"),
    PID,
    "PV1|1|O",
    "ORC|NW|PLACER1|FILLER-ORC",
    obr("ACC-ORM-1"),
    "ZDS|1.2.826.0.1.3680043.2.1125.1.1^QRFARM^Application^DICOM",
)

OMI_O23 = message(
    msh("OMI^O23^OMI_O23", "OMI0001"),
    PID,
    "PV1|1|O",
    "ORC|NW|PLACER2|FILLER-ORC",
    obr("ACC-FROM-OBR"),
    "TQ1|1",
    "IPC|ACC-OMI-1|REQ-PROC-1|1.2.826.0.1.3680043.2.1125.1.2|SPS-1|CT",
)

SIU_S12 = message(
    msh("SIU^S12^SIU_S12", "SIU0001"),
    "SCH|APPT-1|FILL-APPT-1|||||ROUTINE|NORMAL|30|MIN",
    PID,
    "RGS|1|A",
    "AIS|1|A|CTCHEST^CT chest",
)


# --- reading -----------------------------------------------------------------


def test_orm_o01_gives_patient_accession_from_obr_18_and_study_uid_from_zds_1() -> None:
    trigger = read(ORM_O01)
    assert trigger.message_type == "ORM^O01"
    assert trigger.control_id == "ORM0001"
    assert trigger.sending_application == "RIS"
    assert trigger.patient_id == "PAT123"
    assert trigger.accession_number == "ACC-ORM-1"
    assert trigger.study_instance_uid == "1.2.826.0.1.3680043.2.1125.1.1"


def test_orm_o01_without_obr_18_takes_the_accession_from_orc_3() -> None:
    trigger = read(message(msh("ORM^O01", "ORM0002"), PID, "ORC|NW|PLACER1|ACC-ORC-3", "OBR|1"))
    assert trigger.accession_number == "ACC-ORC-3"
    assert trigger.study_instance_uid is None


def test_omi_o23_gives_accession_from_ipc_1_and_study_uid_from_ipc_3() -> None:
    trigger = read(OMI_O23)
    assert trigger.message_type == "OMI^O23"
    assert trigger.control_id == "OMI0001"
    assert trigger.patient_id == "PAT123"
    assert trigger.accession_number == "ACC-OMI-1"
    assert trigger.study_instance_uid == "1.2.826.0.1.3680043.2.1125.1.2"


def test_siu_s12_gives_the_patient_and_no_accession_or_study_it_does_not_carry() -> None:
    trigger = read(SIU_S12)
    assert trigger.message_type == "SIU^S12"
    assert trigger.control_id == "SIU0001"
    assert trigger.patient_id == "PAT123"
    assert trigger.accession_number is None
    assert trigger.study_instance_uid is None


def test_the_patient_id_is_unescaped() -> None:
    trigger = read(ORM_O01.replace("PAT123^", "PAT\\T\\123^"))
    assert trigger.patient_id == "PAT&123"


def test_pid_3_is_read_whole_each_identifier_with_its_assigning_authority() -> None:
    trigger = read(
        ORM_O01.replace(
            PID,
            "PID|1||^^^EMPTY~PAT123^^^HOSP&1.2.40.0.1&ISO^MR~OTHER9^^^CITY^PI~NOAUTH||DOE^JOHN",
        )
    )
    assert [(i.id, i.issuer, i.universal_id) for i in trigger.identifiers] == [
        ("PAT123", "HOSP", "1.2.40.0.1"),
        ("OTHER9", "CITY", None),
        ("NOAUTH", None, None),
    ]
    assert trigger.patient_id == "PAT123"


def test_order_control_order_and_fields_by_place() -> None:
    trigger = read(ORM_O01.replace("ORC|NW|", "ORC|ca|").replace("PV1|1|O", "PV1|1|I"))
    assert trigger.order_control == "CA"
    assert trigger.order_key == "RIS^HOSP:PLACER1"
    assert trigger.lookup("PV1-2") == "I"
    assert trigger.lookup("OBR-4.2") == "CT chest"
    assert trigger.lookup("OBR-4.7") is None
    assert trigger.lookup("ZZZ-1") is None
    assert trigger.lookup("not a place") is None
    # No ORC (a new appointment): NW; the order number from OBR-2 when ORC-2 is
    # empty, and the accession when no order number is given.
    assert read(SIU_S12).order_control == "NW"
    no_placer = read(message(msh("ORM^O01", "ORM0009"), PID, "ORC|NW", obr("ACC-9")))
    assert no_placer.order_key == "RIS^HOSP:PLACER1"
    bare_obr = "|".join(["OBR", "1", *[""] * 16, "ACC-10"])
    bare = read(message(msh("ORM^O01", "ORM0010"), PID, "ORC|NW", bare_obr))
    assert bare.order_key == "RIS^HOSP:ACC-10"


# --- refusing ----------------------------------------------------------------


def _without_pid_3(text: str) -> str:
    return text.replace(PID, "PID|1||||DOE^JOHN")


@pytest.mark.parametrize(
    ("text", "code", "named"),
    [
        pytest.param(ORM_O01.replace("ORM^O01", "ADT^A01"), REJECT, "ADT^A01", id="ADT^A01"),
        pytest.param("hello, this is not HL7\r", REJECT, "MSH", id="not-MSH"),
        pytest.param("PID|1||PAT123\r" + ORM_O01, REJECT, "MSH", id="MSH-not-first"),
        pytest.param(ORM_O01.replace("|ORM0001|", "||"), REJECT, "MSH-10", id="empty-MSH-10"),
        pytest.param(ORM_O01.replace("|ORM0001|", "|  |"), REJECT, "MSH-10", id="blank-MSH-10"),
        pytest.param(_without_pid_3(ORM_O01), ERROR, "PID-3", id="PID-3-empty"),
        pytest.param(
            ORM_O01.replace("PAT123^", "^").replace("OTHER9^", "^"),
            ERROR,
            "PID-3",
            id="PID-3-every-id-empty",
        ),
        pytest.param(
            ORM_O01.replace("OTHER9^", "OTH*^"), ERROR, "PID-3 repetition 2", id="PID-3-wildcard"
        ),
        pytest.param(
            message(msh("ORM^O01", "ORM0003"), "ORC|NW|P1", obr("ACC1")),
            ERROR,
            "PID-3",
            id="no-PID",
        ),
    ],
)
def test_an_unusable_message_is_refused_with_a_reason_naming_what_is_wrong(
    text: str, code: str, named: str
) -> None:
    with pytest.raises(UnusableHl7Message) as refused:
        read(text)
    assert refused.value.code == code
    assert named in refused.value.reason


def test_a_message_type_without_trigger_event_is_refused_not_raised() -> None:
    """MSH-9 holding only a code ("ACK", as in a stray acknowledgement, or a
    type written without its event) is refused like any unsupported type."""
    for text in (
        message("MSH|^~\\&|RIS|HOSP|QRFARM|PACS|20240102030405||ACK|ACK0001|P|2.5", "MSA|AA|X1"),
        ORM_O01.replace("ORM^O01", "ORM"),
    ):
        with pytest.raises(UnusableHl7Message) as refused:
            read(text)
        assert refused.value.code == REJECT
        assert "not supported" in refused.value.reason


# --- acknowledging -----------------------------------------------------------


def _msa(ack: str) -> tuple[hl7.Message, hl7.Segment]:
    parsed = hl7.parse(ack)
    return parsed, parsed.segment("MSA")


@pytest.mark.parametrize("text", [ORM_O01, OMI_O23, SIU_S12], ids=["ORM", "OMI", "SIU"])
def test_an_ack_accepts_and_names_the_original_control_id(text: str) -> None:
    trigger = read(text)
    parsed, msa = _msa(acknowledge(trigger, ACCEPT))
    assert str(parsed["MSH.F9.R1.C1"]) == "ACK"
    assert str(parsed.segment("MSH")(3)) == "QRFARM"
    assert str(parsed.segment("MSH")(5)) == trigger.sending_application
    assert str(msa(1)) == "AA"
    assert str(msa(2)) == trigger.control_id


def test_an_ack_reason_with_delimiters_is_escaped_and_reads_back() -> None:
    parsed, msa = _msa(acknowledge(read(ORM_O01), ERROR, DELIMITERS))
    assert len(msa) == 4  # MSA, MSA-1..3: the reason did not spill into further fields
    assert str(msa(1)) == "AE"
    assert str(msa(2)) == "ORM0001"
    assert parsed.unescape(str(msa(3))) == DELIMITERS


def test_an_ack_reason_is_escaped_with_the_message_own_delimiters() -> None:
    """HL7 lets MSH-1 and MSH-2 choose the delimiters; the ACK copies them,
    so its reason must be escaped with those, not with the usual ones."""
    custom = ORM_O01.replace("|", "#").replace("MSH#^~\\&#", "MSH#@~\\&#").replace("^", "@")
    trigger = read(custom)
    assert trigger.patient_id == "PAT123"
    reason = "no rule for ORM@O01 # ask the PACS team"
    parsed, msa = _msa(acknowledge(trigger, ERROR, reason))
    assert len(msa) == 4
    assert str(msa(2)) == "ORM0001"
    assert parsed.unescape(str(msa(3))) == reason


def test_a_nak_for_an_unparseable_message_parses_and_carries_the_reason() -> None:
    reason = f"garbled: {DELIMITERS}"
    parsed, msa = _msa(acknowledge_raw("hello, this is not HL7", REJECT, reason))
    assert str(parsed["MSH.F9.R1.C1"]) == "ACK"
    assert len(msa) == 4
    assert str(msa(1)) == "AR"
    assert str(msa(2)) == ""
    assert parsed.unescape(str(msa(3))) == reason


def test_a_nak_for_a_refused_message_names_its_control_id() -> None:
    text = ORM_O01.replace("ORM^O01", "ADT^A01")
    with pytest.raises(UnusableHl7Message) as refused:
        read(text)
    parsed, msa = _msa(acknowledge_raw(text, refused.value.code, refused.value.reason))
    assert str(msa(1)) == "AR"
    assert str(msa(2)) == "ORM0001"
    assert parsed.unescape(str(msa(3))) == refused.value.reason


def test_a_trigger_keeps_the_parsed_message() -> None:
    trigger: Trigger = read(ORM_O01)
    assert str(trigger.message.segment("PID")(5)) == "DOE^JOHN"
