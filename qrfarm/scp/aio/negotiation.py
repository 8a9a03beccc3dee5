"""A-ASSOCIATE negotiation as the acceptor, with pynetdicom's items and tables.

Contexts are negotiated as pynetdicom's unrestricted storage service does
(every storage SOP class it knows, private and unknown ones too, in the
first transfer syntax proposed; Verification in any), so that both receive
paths accept the same associations. Role selection is answered as pynetdicom
answers it; an asynchronous operations window is refused cleanly by
answering (1, 1): one operation at a time, as on pynetdicom's path.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import cast

from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_unrestricted

from qrfarm.dicom.contexts import MAX_CONTEXTS

APPLICATION_CONTEXT_NAME = UID("1.2.840.10008.3.1.1.1")
# A sender asks in the same words every time (storescu proposes some 120
# contexts): decoding and negotiating them took tens of milliseconds of the
# loop per association, so the answers to requests seen lately are kept,
# by their bytes. Only small requests, and few: a hostile peer can only
# push others out.
REMEMBERED_RQ_BYTES = 64 << 10
REMEMBERED_RQS = 32
# Where an A-ASSOCIATE-RQ's variable items begin: PDU header 6, protocol
# version 2, reserved 2, called and calling AE titles 16 each, reserved 32.
_VARIABLE_ITEMS = 74
# The longest A-ASSOCIATE-RQ taken: 128 contexts of many transfer syntaxes
# each fit in a fraction of it; more is read no further (the connection ends).
MAX_REQUEST_BYTES = 256 << 10


@dataclass
class Request:
    """An A-ASSOCIATE-RQ as the SCP reads it."""

    primitive: A_ASSOCIATE
    calling_ae: str
    called_ae: str
    peer_max_pdu: int  # 0: no limit

    @classmethod
    def decode(cls, pdu: bytes) -> Request:
        """The request a whole A-ASSOCIATE-RQ PDU makes; ValueError when it is
        malformed or proposes more presentation contexts than PS3.8 allows
        (counted before pynetdicom decodes the items)."""
        proposed = count_contexts(pdu)
        if proposed > MAX_CONTEXTS:
            raise ValueError(f"{proposed} presentation contexts proposed, at most {MAX_CONTEXTS}")
        rq = A_ASSOCIATE_RQ()
        rq.decode(pdu)
        primitive = rq.to_primitive()
        return cls(
            primitive,
            str(primitive.calling_ae_title).strip(),
            str(primitive.called_ae_title).strip(),
            int(primitive.maximum_length_received or 0),
        )


def count_contexts(pdu: bytes) -> int:
    """The presentation context items (type 0x20) of an A-ASSOCIATE-RQ PDU,
    walked by their lengths only."""
    offset, count = _VARIABLE_ITEMS, 0
    while offset + 4 <= len(pdu):
        item_type = pdu[offset]
        (length,) = struct.unpack_from(">H", pdu, offset + 2)
        count += item_type == 0x20
        offset += 4 + length
    return count


@dataclass
class Accepted:
    """The A-ASSOCIATE-AC to send, and the contexts it accepted by ID."""

    pdu: bytes
    contexts: dict[int, PresentationContext]


def accept(request: Request, supported: list[PresentationContext], max_pdu: int) -> Accepted:
    """Negotiate ``request`` against ``supported``; ``max_pdu`` is the longest
    P-DATA the SCP takes (announced as its Maximum Length)."""
    rq = request.primitive
    items = rq.user_information
    roles = {
        cast(UID, item.sop_class_uid): (item.scu_role, item.scp_role)
        for item in items
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation)
    }
    result, reply_roles = negotiate_unrestricted(
        rq.presentation_context_definition_list, supported, roles
    )
    ac = A_ASSOCIATE()
    ac.application_context_name = APPLICATION_CONTEXT_NAME
    ac.calling_ae_title = rq.calling_ae_title
    ac.called_ae_title = rq.called_ae_title
    ac.result = 0x00
    ac.result_source = 0x01
    ac.presentation_context_definition_results_list = result
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
    user_information: list[object] = [length, implementation, version, *reply_roles]
    if any(isinstance(item, AsynchronousOperationsWindowNegotiation) for item in items):
        window = AsynchronousOperationsWindowNegotiation()
        window.maximum_number_operations_invoked = 1
        window.maximum_number_operations_performed = 1
        user_information.append(window)
    ac.user_information = user_information  # type: ignore[assignment]
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(ac)
    accepted = {cast(int, cx.context_id): cx for cx in result if cx.result == 0x00}
    return Accepted(pdu.encode(), accepted)


class RecentRequests:
    """Requests lately decoded and negotiated, by their bytes: the same
    A-ASSOCIATE-RQ (AE titles included) always gets the same answer."""

    def __init__(self) -> None:
        self._answers: OrderedDict[tuple[bytes, int], tuple[Request, Accepted | None]] = (
            OrderedDict()
        )

    def decode(self, pdu: bytes) -> Request:
        remembered = self._answers.get((pdu, 0))
        if remembered is not None:
            self._answers.move_to_end((pdu, 0))
            return remembered[0]
        request = Request.decode(pdu)
        self._remember((pdu, 0), request, None)
        return request

    def accept(
        self, pdu: bytes, request: Request, supported: list[PresentationContext], max_pdu: int
    ) -> Accepted:
        remembered = self._answers.get((pdu, max_pdu or -1))
        if remembered is not None and remembered[1] is not None:
            return remembered[1]
        accepted = accept(request, supported, max_pdu)
        self._remember((pdu, max_pdu or -1), request, accepted)
        return accepted

    def _remember(
        self, key: tuple[bytes, int], request: Request, accepted: Accepted | None
    ) -> None:
        if len(key[0]) > REMEMBERED_RQ_BYTES:
            return
        self._answers[key] = (request, accepted)
        while len(self._answers) > REMEMBERED_RQS:
            self._answers.popitem(last=False)


def reject(reason: tuple[int, int, int]) -> bytes:
    """An A-ASSOCIATE-RJ with (result, source, diagnostic)."""
    rj = A_ASSOCIATE()
    rj.result, rj.result_source, rj.diagnostic = reason
    pdu = A_ASSOCIATE_RJ()
    pdu.from_primitive(rj)
    return pdu.encode()
