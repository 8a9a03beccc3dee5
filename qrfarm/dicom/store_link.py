"""The upper layer of a Storage SCU association, spoken directly on a socket.

pynetdicom hands each 16 KiB P-DATA PDU of a data set from the caller's
thread to its DUL thread through a queue, one reactor turn each, with two
polling threads per association: forwarding 200 CT images to Orthanc took
about twice DCMTK storescu's time. Here one thread negotiates with
pynetdicom's PDU classes, then writes each C-STORE as PDU headers around
slices of the file's bytes (one ``sendmsg`` per burst) and reads the
response PDU itself: only the C-STORE service, nothing else on the
association.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Sequence
from contextlib import suppress
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext

from qrfarm.errors import (
    AcseTimeout,
    AssociationAborted,
    AssociationRejected,
    DimseTimeout,
    PeerUnreachable,
    QrfarmError,
)

from .node import Node

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
# What we announce we take: the peer sends only responses.
OUR_MAX_PDU = 1 << 20
# The most PDV bytes written with one sendmsg (headers and file slices).
BURST = 1 << 20
_PDU_HEADER = struct.Struct(">BxI")
_PDV_HEADER = struct.Struct(">IBB")  # item length, context ID, message control header
RELEASE_RQ = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
ABORT = b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"
# The most bytes a response PDU from the peer may claim.
MAX_INCOMING = 1 << 22
# A C-STORE-RSP command set is a few hundred bytes; an Error Comment adds 64.
MAX_COMMAND = 64 << 10
C_STORE_RSP = 0x8001
# The least maximum PDU a destination may announce (0: no limit): below it a
# data set would go in thousands of PDUs (DCMTK's own floor is 4 KiB).
MIN_PEER_MAX_PDU = 1024


class StoreLink:
    """One association: open it, send C-STOREs, release it."""

    def __init__(self, sock: socket.socket, node: Node, dimse_timeout: float) -> None:
        self.sock = sock
        self.node = node
        self.dimse_timeout = dimse_timeout
        self.peer_max_pdu = 0
        # (SOP class, transfer syntax) -> presentation context ID
        self.contexts: dict[tuple[str, str], int] = {}

    @classmethod
    def open(
        cls,
        node: Node,
        contexts: Sequence[PresentationContext],
        *,
        calling_ae: str,
        connect_timeout: float | None,
        acse_timeout: float,
        dimse_timeout: float,
    ) -> StoreLink:
        try:
            sock = socket.create_connection((node.host, node.port), timeout=connect_timeout)
        except OSError as exc:
            raise PeerUnreachable(node.host, node.port, exc.strerror or str(exc)) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if node.tls is not None:
                sock = node.tls.context().wrap_socket(
                    sock, server_hostname=node.tls.server_hostname or node.host
                )
            link = cls(sock, node, dimse_timeout)
            link._associate(contexts, calling_ae, acse_timeout)
        except BaseException:
            sock.close()
            raise
        return link

    # -- association -------------------------------------------------------------------

    def _associate(
        self, contexts: Sequence[PresentationContext], calling_ae: str, acse_timeout: float
    ) -> None:
        primitive = A_ASSOCIATE()
        primitive.application_context_name = APPLICATION_CONTEXT
        primitive.calling_ae_title = calling_ae
        primitive.called_ae_title = self.node.ae_title
        maximum = MaximumLengthNotification()
        maximum.maximum_length_received = OUR_MAX_PDU
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
        primitive.user_information = [maximum, implementation, version]
        proposed: dict[int, PresentationContext] = {}
        for number, context in enumerate(contexts):
            context.context_id = 2 * number + 1
            proposed[context.context_id] = context
        primitive.presentation_context_definition_list = list(contexts)
        request = A_ASSOCIATE_RQ()
        request.from_primitive(primitive)
        deadline = time.monotonic() + acse_timeout
        try:
            self.sock.settimeout(acse_timeout)
            self.sock.sendall(request.encode())
            kind, body = self._read_pdu(deadline)
        except TimeoutError as exc:
            raise AcseTimeout(
                f"{self.node} did not answer the association request within {acse_timeout:g} s"
            ) from exc
        if kind == 0x03:
            raise self._rejected(body)
        if kind != 0x02:
            raise AssociationAborted(f"{self.node} aborted the association request")
        try:
            accept = A_ASSOCIATE_AC()
            accept.decode(b"\x02\x00" + struct.pack(">I", len(body)) + body)
            answer = accept.to_primitive()
            for item in answer.user_information:
                if isinstance(item, MaximumLengthNotification):
                    self.peer_max_pdu = int(item.maximum_length_received)
            results = list(answer.presentation_context_definition_results_list)
        except Exception as exc:
            self.abort()
            raise AssociationAborted(
                f"{self.node} answered the association request with a malformed "
                f"A-ASSOCIATE-AC ({type(exc).__name__})"
            ) from exc
        if 0 < self.peer_max_pdu < MIN_PEER_MAX_PDU:
            self.abort()
            raise AssociationAborted(
                f"{self.node} announced a maximum PDU of {self.peer_max_pdu} bytes, "
                f"under the {MIN_PEER_MAX_PDU} this sender needs: the association was aborted"
            )
        for result in results:
            asked = proposed.get(result.context_id or 0)
            if result.result == 0 and asked is not None and result.transfer_syntax:
                key = (str(asked.abstract_syntax), str(result.transfer_syntax[0]))
                self.contexts.setdefault(key, result.context_id or 0)
        self.sock.settimeout(self.dimse_timeout)

    def _rejected(self, body: bytes) -> QrfarmError:
        """The error for an A-ASSOCIATE-RJ (or for one too malformed to read)."""
        try:
            rejection = A_ASSOCIATE_RJ()
            rejection.decode(b"\x03\x00" + struct.pack(">I", len(body)) + body)
            return AssociationRejected(
                rejection.result_str,
                rejection.source_str,
                rejection.reason_str,
                transient=rejection.result == 0x02,
            )
        except Exception as exc:  # noqa: BLE001 (as above)
            self.close()
            return AssociationAborted(
                f"{self.node} answered the association request with a malformed "
                f"A-ASSOCIATE-RJ ({type(exc).__name__})"
            )

    def release(self) -> None:
        with suppress(OSError, QrfarmError):
            self.sock.sendall(RELEASE_RQ)
            self._read_pdu(time.monotonic() + min(5.0, self.dimse_timeout))
        self.close()

    def abort(self) -> None:
        with suppress(OSError):
            self.sock.sendall(ABORT)
        self.close()

    def close(self) -> None:
        with suppress(OSError):
            self.sock.close()

    # -- C-STORE -----------------------------------------------------------------------

    def store(
        self,
        context_id: int,
        sop_class: str,
        sop_instance: str,
        message_id: int,
        data: bytes | memoryview,
    ) -> tuple[int, str | None]:
        """One C-STORE of a data set already encoded in the context's syntax;
        the response's Status and Error Comment."""
        command = _command(sop_class, sop_instance, message_id)
        try:
            self._send(context_id, 0x03, command)
            self._send_data(context_id, memoryview(data))
            return self._response(message_id)
        except TimeoutError as exc:
            self.abort()
            raise DimseTimeout(
                f"{self.node} sent no C-STORE response within {self.dimse_timeout:g} s; "
                "the association was aborted"
            ) from exc
        except AssociationAborted:
            self.abort()  # a peer that broke the protocol is told so (A-ABORT)
            raise
        except (OSError, ssl.SSLError) as exc:
            self.close()
            raise AssociationAborted(
                f"the association with {self.node} was aborted or its connection closed: "
                f"{type(exc).__name__}"
            ) from exc

    def _room(self) -> int:
        # PDV bytes per PDU: its length less the PDV item's own 6 bytes; 0 is no limit.
        return (self.peer_max_pdu or (1 << 30)) - 6

    def _send(self, context_id: int, control: int, data: bytes) -> None:
        header = _PDU_HEADER.pack(0x04, len(data) + 6) + _PDV_HEADER.pack(
            len(data) + 2, context_id, control
        )
        self.sock.sendall(header + data)

    def _send_data(self, context_id: int, data: memoryview) -> None:
        room = self._room()
        parts: list[bytes | memoryview] = []
        queued = 0
        for start in range(0, len(data), room) or [0]:
            piece = data[start : start + room]
            last = start + room >= len(data)
            parts.append(
                _PDU_HEADER.pack(0x04, len(piece) + 6)
                + _PDV_HEADER.pack(len(piece) + 2, context_id, 0x02 if last else 0x00)
            )
            parts.append(piece)
            queued += len(piece)
            if queued >= BURST or last:
                self._sendmsg(parts)
                parts, queued = [], 0

    def _sendmsg(self, parts: list[bytes | memoryview]) -> None:
        if isinstance(self.sock, ssl.SSLSocket):  # no sendmsg over TLS
            self.sock.sendall(b"".join(parts))
            return
        first = 0
        while first < len(parts):
            sent = self.sock.sendmsg(parts[first : first + 512])
            while first < len(parts) and sent >= len(parts[first]):
                sent -= len(parts[first])
                first += 1
            if first < len(parts) and sent:
                parts[first] = memoryview(parts[first])[sent:]

    def _response(self, message_id: int) -> tuple[int, str | None]:
        """The C-STORE-RSP to ``message_id``: within the DIMSE timeout in all
        (a peer trickling bytes does not restart it), a command set of at most
        MAX_COMMAND bytes and no data set."""
        deadline = time.monotonic() + self.dimse_timeout
        command = bytearray()
        while True:
            kind, body = self._read_pdu(deadline)
            if kind == 0x07:
                raise AssociationAborted(f"{self.node} aborted the association")
            if kind != 0x04:
                raise AssociationAborted(f"{self.node} sent PDU type 0x{kind:02X} mid-operation")
            offset = 0
            while offset + 6 <= len(body):
                length, _context, control = _PDV_HEADER.unpack_from(body, offset)
                if not control & 0x01:
                    raise AssociationAborted(f"{self.node} sent a data set with a C-STORE response")
                command += body[offset + 6 : offset + 4 + length]
                offset += 4 + length
                if len(command) > MAX_COMMAND:
                    raise AssociationAborted(
                        f"{self.node} sent a response command set over {MAX_COMMAND} bytes"
                    )
                if control & 0x02:
                    answer = self._answer(bytes(command), message_id)
                    command.clear()
                    if answer is not None:
                        return answer

    def _answer(self, command: bytes, message_id: int) -> tuple[int, str | None] | None:
        """Status and Error Comment of a whole response command set; None when
        it answers another message."""
        try:
            ds = read_dataset(BytesIO(command), True, True)
            field = int(ds.get("CommandField", 0))
            responding_to = int(ds.get("MessageIDBeingRespondedTo", message_id))
            status = int(ds.Status)
            comment = ds.get("ErrorComment")
        except Exception as exc:
            raise AssociationAborted(
                f"{self.node} sent a C-STORE response that cannot be read ({type(exc).__name__})"
            ) from exc
        if field != C_STORE_RSP:
            raise AssociationAborted(
                f"{self.node} answered a C-STORE with command field 0x{field:04X}"
            )
        if responding_to != message_id:
            return None
        return status, str(comment) if comment is not None else None

    def _read_pdu(self, deadline: float) -> tuple[int, bytes]:
        """One whole PDU by ``deadline`` (TimeoutError past it, however the
        peer spaces its bytes)."""
        header = self._read_exactly(6, deadline)
        kind, length = _PDU_HEADER.unpack(header)
        if length > MAX_INCOMING:
            raise AssociationAborted(f"{self.node} sent a PDU of {length} bytes")
        return kind, self._read_exactly(length, deadline)

    def _read_exactly(self, count: int, deadline: float) -> bytes:
        chunks = bytearray()
        while len(chunks) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no whole PDU from {self.node} in time")
            self.sock.settimeout(left)
            chunk = self.sock.recv(count - len(chunks))
            if not chunk:
                raise AssociationAborted(f"{self.node} closed the connection")
            chunks += chunk
        return bytes(chunks)


def _command(sop_class: str, sop_instance: str, message_id: int) -> bytes:
    """A C-STORE-RQ command set, Implicit VR Little Endian, with its group length."""
    ds = Dataset()
    ds.AffectedSOPClassUID = UID(sop_class)
    ds.CommandField = 0x0001
    ds.MessageID = message_id
    ds.Priority = 0
    ds.CommandDataSetType = 0x0000
    ds.AffectedSOPInstanceUID = UID(sop_instance)
    body = _encode(ds)
    group = Dataset()
    group.CommandGroupLength = len(body)
    return _encode(group) + body


def _encode(ds: Dataset) -> bytes:
    from pydicom.filebase import DicomBytesIO

    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = True
    write_dataset(buffer, ds)
    return buffer.getvalue()
