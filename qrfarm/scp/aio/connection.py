"""One connection on the asyncio path: PROXY header, A-ASSOCIATE, then the
storage service until A-RELEASE, A-ABORT, the idle timer or a drain.

Each association does one operation at a time (the window is refused), so a
connection is a plain loop: read a PDU, and when a message is whole, answer
it before reading on. A data set goes to its temp file as its fragments
arrive, gathered into writes of 256 KiB; memory per association is a PDU
and that buffer, whatever the instance size.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

from pynetdicom.presentation import PresentationContext

from qrfarm.dicom import Status, rejection
from qrfarm.dicom.commitment import STORAGE_COMMITMENT_PUSH
from qrfarm.errors import UpperLayerViolation
from qrfarm.nodes.hosts import peer_address

from .. import admission
from ..commitment import record_report
from ..facts import StoreRequest
from ..handlers import store_spooled
from ..spool import META_ALLOWANCE, MIN_PDU_READ
from . import messages, negotiation
from .incoming import Incoming, TempFiles, file_meta
from .pdus import read_pdu, read_pdu_while_sent
from .preamble import proxy_header, start_tls
from .reports import N_EVENT_REPORT_RQ_FIELD, IncomingReport, report_response

if TYPE_CHECKING:
    from .server import AioStorageServer

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 64 << 10
# How long a connection over its host's cap of waiting ones has to ask.
OVER_CAP_GRACE_S = 1.0


class Connection:
    """The association of one TCP connection; holds a slot (the gate's duck
    type of an association) from admission until it ends."""

    def __init__(
        self,
        server: AioStorageServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.server = server
        self.tls = tls
        self.ctx = server.ctx
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername") or ("", 0)
        self.host = str(peer[0])
        self.is_established = False
        self.is_released = False
        self.is_aborted = False
        self.is_rejected = False
        self.closed = False
        self.calling_ae = ""
        self.called_ae = ""
        self.peer_max_pdu = 0
        self.contexts: dict[int, PresentationContext] = {}
        self.command = bytearray()
        self.incoming: Incoming | IncomingReport | None = None
        self.temp_files = TempFiles(
            self.ctx.storage.incoming(),
            self.ctx.max_instance_bytes + META_ALLOWANCE,
            server.pool,
        )
        self.read_limit = max(self.ctx.max_pdu, MIN_PDU_READ) if self.ctx.max_pdu else 1 << 30

    def is_alive(self) -> bool:
        return not self.closed

    async def run(self) -> None:
        try:
            if await self._associate():
                await self._serve()
        except UpperLayerViolation as exc:
            log.warning("association from %s at %s aborted: %s", self.calling_ae, self.host, exc)
            self._abort(exc.reason)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError) as exc:
            if self.is_established:
                log.warning(
                    "association from %s at %s ended without release: %s",
                    self.calling_ae,
                    self.host,
                    exc,
                )
            self.is_aborted = True
        finally:
            self.release_files()
            self.closed = True
            self.writer.close()

    async def _associate(self) -> bool:
        """PROXY header, TLS, and an A-ASSOCIATE-RQ answered, all within the
        associate timeout (ARTIM); True once the association is established."""
        pending = False
        try:
            async with asyncio.timeout(self.server.associate_timeout_s) as artim:
                if not await self._take_proxy_header():
                    return False
                if self.tls is not None and not await start_tls(self.writer, self.tls, self.host):
                    return False
                pending = self.server.take_pending(self.host)
                if not pending:
                    # Over the host's cap: a peer opening many associations at
                    # once asks at once; an idle one is closed within the grace.
                    grace = asyncio.get_running_loop().time() + OVER_CAP_GRACE_S
                    artim.reschedule(min(artim.when() or grace, grace))
                pdu_type, pdu = await read_pdu(self.reader, negotiation.MAX_REQUEST_BYTES)
        except TimeoutError:
            if pending:
                log.warning(
                    "connection from %s closed: no association asked for in time", self.host
                )
            else:
                log.warning(
                    "connection from %s closed: %d from there are not associated yet",
                    self.host,
                    self.ctx.gate.max_pending_per_host,
                )
            return False
        finally:
            if pending:
                self.server.release_pending(self.host)
        if pdu_type != messages.ASSOCIATE_RQ:
            raise UpperLayerViolation(f"PDU type {pdu_type:#04x} before A-ASSOCIATE-RQ")
        try:
            request = self.server.recent_requests.decode(pdu)
        except Exception as exc:
            raise UpperLayerViolation(
                f"A-ASSOCIATE-RQ not understood: {exc}", messages.ABORT_INVALID_PDU_PARAMETER
            ) from exc
        self.calling_ae, self.called_ae = request.calling_ae, request.called_ae
        self.peer_max_pdu = request.peer_max_pdu
        # Admission may read the known nodes from the database: off the loop.
        reason = await self.server.blocking(
            admission.admit,
            self.ctx,
            request.calling_ae,
            request.called_ae,
            self.server.ae_title,
            self.host,
            self,
        )
        if reason is not None:
            self.is_rejected = True
            self.writer.write(negotiation.reject(reason))
            await self.writer.drain()
            await self._await_close()
            return False
        accepted = self.server.recent_requests.accept(
            pdu, request, self.server.supported, self.ctx.max_pdu
        )
        # Worded as pynetdicom logs it, so that logs read alike on both paths.
        log.info("Accepting Association from %s at %s", self.calling_ae, self.host)
        self.contexts = accepted.contexts
        self.writer.write(accepted.pdu)
        self.is_established = True
        return True

    async def _await_close(self) -> None:
        """After an A-ASSOCIATE-RJ the requestor closes the connection (PS3.8
        Sta13); closed here first, a peer may see the close before the answer
        and report an abort. At most FLUSH_S."""
        with suppress(TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            async with asyncio.timeout(rejection.FLUSH_S):
                while await self.reader.read(4096):
                    pass

    async def _take_proxy_header(self) -> bool:
        """The client's address from a PROXY v2 header, when the peer is a proxy."""
        proxies = self.server.proxies
        if proxies is None or not proxies.admits(peer_address(self.host)):
            return True
        client = await proxy_header(self.reader, self.writer, self.host, tls=self.tls is not None)
        if client is False:
            return False
        if client is not None:  # None: the proxy's own health check
            self.host = client
        return True

    async def _serve(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.server.idle_timeout_s) as idle:
                    pdu_type, pdu = await read_pdu_while_sent(
                        self.reader, self.read_limit, idle, self.server.idle_timeout_s
                    )
            except TimeoutError:
                log.warning(
                    "association from %s at %s aborted: idle for %g s",
                    self.calling_ae,
                    self.host,
                    self.server.idle_timeout_s,
                )
                self._abort()
                return
            if pdu_type == messages.P_DATA:
                for message in self._p_data(memoryview(pdu)[messages.PDU_HEADER.size :]):
                    await message
                await self._drain()
            elif pdu_type == messages.RELEASE_RQ:
                self.writer.write(messages.release_response())
                await self.writer.drain()
                self.is_released = True
                return
            elif pdu_type == messages.ABORT:
                self.is_aborted = True
                return
            else:
                raise UpperLayerViolation(f"unexpected PDU type {pdu_type:#04x}")

    async def _drain(self) -> None:
        """Read on only once the answers written so far are taken (a peer that
        never reads them would otherwise grow the write buffer without end);
        within the idle timeout."""
        if not self.writer.transport.get_write_buffer_size():
            return  # all taken by the socket: nothing to wait for (the usual case)
        try:
            async with asyncio.timeout(self.server.idle_timeout_s):
                await self.writer.drain()
        except TimeoutError:
            log.warning(
                "association from %s at %s aborted: its answers not read for %g s",
                self.calling_ae,
                self.host,
                self.server.idle_timeout_s,
            )
            raise ConnectionError("the peer does not read its answers") from None

    def _p_data(self, body: memoryview) -> list[asyncio.Task[None]]:
        """Take the PDVs of one P-DATA-TF; the answers of the messages it completed."""
        answers: list[asyncio.Task[None]] = []
        offset = 0
        while offset < len(body):
            if offset + messages.PDV_HEADER.size > len(body):
                raise UpperLayerViolation(
                    "PDV item cut short", messages.ABORT_INVALID_PDU_PARAMETER
                )
            length, context_id, control = messages.PDV_HEADER.unpack_from(body, offset)
            end = offset + 4 + length
            if length < 2 or end > len(body):
                raise UpperLayerViolation(
                    "PDV item length wrong", messages.ABORT_INVALID_PDU_PARAMETER
                )
            data = body[offset + messages.PDV_HEADER.size : end]
            offset = end
            if control & 1:
                if self.incoming is not None:
                    raise UpperLayerViolation("a command fragment inside a data set")
                if answers and not self.command:
                    # The window is one operation: the next request may come
                    # only after this one's answer.
                    raise UpperLayerViolation(
                        "a request before the one in progress was answered "
                        "(the asynchronous operations window is 1)"
                    )
                self.command += data
                if len(self.command) > MAX_COMMAND_BYTES:
                    # A command set is a few hundred bytes; one never ending is not.
                    raise UpperLayerViolation(
                        f"a command set over {MAX_COMMAND_BYTES} bytes",
                        messages.ABORT_INVALID_PDU_PARAMETER,
                    )
                if control & 2:
                    self._command(context_id)
            else:
                incoming = self.incoming
                if incoming is None or context_id != incoming.context_id:
                    raise UpperLayerViolation("a data set fragment without its command")
                incoming.write(data)
                if control & 2:
                    self.incoming = None
                    answer = (
                        self._report(incoming)
                        if isinstance(incoming, IncomingReport)
                        else self._store(incoming)
                    )
                    answers.append(asyncio.ensure_future(answer))
        return answers

    def _command(self, context_id: int) -> None:
        """A whole command set: C-ECHO answered at once, a C-STORE's temp file
        opened for its data set."""
        encoded = bytes(self.command)
        self.command.clear()
        context = self.contexts.get(context_id)
        if context is None:
            raise UpperLayerViolation(
                f"a command on presentation context {context_id}, not accepted",
                messages.ABORT_INVALID_PDU_PARAMETER,
            )
        try:
            command = messages.command_set(encoded)
            field = messages.us_value(command, messages.COMMAND_FIELD)
            data_set_type = messages.us_value(command, messages.DATA_SET_TYPE)
            if field is None or data_set_type is None:
                raise ValueError("no Command Field or Command Data Set Type")
            has_data_set = data_set_type != messages.NO_DATA_SET
            is_store = field == messages.C_STORE_RQ_FIELD
            request = messages.StoreCommand.of(command) if is_store else None
            is_report = (
                field == N_EVENT_REPORT_RQ_FIELD
                and context.abstract_syntax == STORAGE_COMMITMENT_PUSH
            )
            report = IncomingReport(command, context_id, context) if is_report else None
        except Exception as exc:
            raise UpperLayerViolation(
                f"command set not understood: {exc}", messages.ABORT_INVALID_PDU_PARAMETER
            ) from exc
        if field == messages.C_ECHO_RQ_FIELD and not has_data_set:
            echo = messages.echo_request(command)
            self.writer.write(messages.echo_response(echo, context_id, self.peer_max_pdu))
            return
        if report is not None:
            self.incoming = report
            if not has_data_set:  # refused for want of content, at once
                self.incoming = None
                self.writer.write(self._report_answer(report, Status.INVALID_ARGUMENT_VALUE))
            return
        if request is None or not has_data_set:
            raise UpperLayerViolation(f"command {field:#06x} is not a service of this SCP")
        spool = self.temp_files.take()
        spool.write(file_meta(request, context))
        self.incoming = Incoming(request, context_id, context, spool)

    async def _store(self, incoming: Incoming) -> None:
        """Store, correlate and record off the loop; answer once that is done."""
        incoming.flush()  # never raises: a failed write is the spool's failure
        synced = self.server.pool.submit(incoming.spool.sync_and_close, self.ctx.storage.fsync)
        request = incoming.request
        store_request = StoreRequest(
            sop_class_uid=request.sop_class_uid,
            sop_instance_uid=request.sop_instance_uid,
            context_abstract_syntax=str(incoming.context.abstract_syntax),
            transfer_syntax=str(incoming.context.transfer_syntax[0]),
            calling_ae=self.calling_ae,
            called_ae=self.server.ae_title,
            peer_host=self.host or None,
            originator_ae=request.originator_ae,
            originator_message_id=request.originator_message_id,
        )
        received = Path(incoming.spool.name)
        answer = await self.server.blocking(
            store_spooled, self.ctx, store_request, received, incoming.spool, synced
        )
        self.writer.write(
            messages.store_response(request, answer, incoming.context_id, self.peer_max_pdu)
        )

    async def _report(self, report: IncomingReport) -> None:
        """A Storage Commitment report: recorded off the loop, then answered."""
        if report.too_large:
            log.warning(
                "storage commitment report from %s refused: %d bytes",
                self.calling_ae,
                report.received,
            )
            status = Status.RESOURCE_LIMITATION
        else:
            # Off the loop: decoding a report of some MB, and the known nodes
            # (which may be read from the database).
            status = await self.server.blocking(self._record_report, report)
        self.writer.write(self._report_answer(report, status))

    def _record_report(self, report: IncomingReport) -> int:
        info = report.event_information()
        report.discard()
        return record_report(self.ctx, self.calling_ae, self.host, report.event_type, info)

    def _report_answer(self, report: IncomingReport, status: int) -> bytes:
        return report_response(report, status, self.peer_max_pdu)

    def _abort(self, reason: int | None = None) -> None:
        self.is_aborted = True
        with suppress(Exception):
            self.writer.write(messages.abort(reason))

    def release_files(self) -> None:
        """Remove the temp files of a data set cut short and of the spare."""
        if self.incoming is not None:
            self.incoming.discard()
            self.incoming = None
        self.temp_files.close()

    def abort(self) -> None:
        """End the association now (a drain that ran out of time)."""
        self._abort()
        self.writer.close()
