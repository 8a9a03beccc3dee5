"""A C-STORE's data set on its way to disk: its temp file, written as the
fragments arrive, behind the file meta pynetdicom would write."""

from __future__ import annotations

from concurrent.futures import Executor, Future
from pathlib import Path

from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom.dsutils import create_file_meta
from pynetdicom.presentation import PresentationContext

from ..spool import SpoolFile
from . import encoding
from .messages import StoreCommand

# Fragments are gathered into writes of this size: small enough that an
# instance is mostly on disk while its last PDUs still arrive (the sender
# keeps filling the socket buffer meanwhile), large enough for few syscalls.
WRITE_CHUNK = 256 << 10


class TempFiles:
    """The temp files of one association's data sets. The next one is made in
    the thread pool while the current data set arrives: creating a file waits
    on the file system's journal, which the stores' fsyncs keep busy (0.2 to
    0.5 ms of the loop's time per instance, when it was made on the loop)."""

    def __init__(
        self,
        folder: Path,
        limit: int,
        pool: Executor,
    ) -> None:
        self.folder = folder
        self.limit = limit
        self.pool = pool
        # A concurrent future: its callbacks run in the pool (or at once),
        # whether the event loop still runs or not.
        self.spare: Future[SpoolFile] | None = None

    def _new(self) -> SpoolFile:
        return SpoolFile(self.folder, self.limit)

    def take(self) -> SpoolFile:
        """A temp file for the data set now arriving: the spare if it is made
        and sound (else one made now, the spare kept for the next), and the
        next spare asked of the pool."""
        taken = None
        spare = self.spare
        if spare is not None and spare.done():
            self.spare = None
            if spare.exception() is None and spare.result().failure is None:
                taken = spare.result()
            else:
                spare.add_done_callback(_discard_spare)
        if self.spare is None:
            self.spare = self.pool.submit(self._new)
        return taken if taken is not None else self._new()

    def close(self) -> None:
        """The spare removed (once made, if it is still being made)."""
        if self.spare is not None:
            self.spare.add_done_callback(_discard_spare)
            self.spare = None


def _discard_spare(spare: Future[SpoolFile]) -> None:
    if not spare.cancelled() and spare.exception() is None:
        spare.result().discard()


class Incoming:
    """A C-STORE whose data set is arriving: its request and its temp file."""

    def __init__(
        self,
        request: StoreCommand,
        context_id: int,
        context: PresentationContext,
        spool: SpoolFile,
    ) -> None:
        self.request = request
        self.context_id = context_id
        self.context = context
        self.spool = spool
        self.buffer = bytearray()

    def write(self, data: memoryview) -> None:
        self.buffer += data
        if len(self.buffer) >= WRITE_CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            # A new buffer, not this one cleared: a failed write's traceback
            # (kept as the spool's failure) may still hold a view of it.
            self.spool.write(memoryview(self.buffer))
            self.buffer = bytearray()

    def discard(self) -> None:
        self.spool.discard()


def file_meta(request: StoreCommand, context: PresentationContext) -> bytes:
    """Preamble and file meta, as pynetdicom writes them ahead of a spooled
    data set (the file is stored as is, and read back by its offset)."""
    syntax = str(context.transfer_syntax[0])
    fast = encoding.file_meta(request.sop_class_uid, request.sop_instance_uid, syntax)
    if fast is not None:
        return fast
    out = DicomBytesIO()
    out.write(encoding.PREAMBLE)
    try:
        write_file_meta_info(
            out,
            create_file_meta(
                sop_class_uid=UID(request.sop_class_uid),
                sop_instance_uid=UID(request.sop_instance_uid),
                transfer_syntax=UID(syntax),
            ),
        )
    except Exception:  # noqa: BLE001 (whatever the UIDs hold)
        # Not a Part-10 file then: the data set is refused as not understood.
        return b""
    return out.getvalue()
