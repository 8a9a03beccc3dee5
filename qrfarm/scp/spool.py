"""Received data sets go to disk as their fragments arrive, never whole in memory.

pynetdicom can write a C-STORE's data set to a temp file
(``STORE_RECV_CHUNKED_DATASET``), but the switch is process-wide, and in a
process that also runs C-GETs (whose instances pynetdicom must hand over as
bytes) or several SCPs, flipping it would change them too. So the switch is
read per thread here: only the DUL threads of this SCP's associations (which
decode P-DATA) see it on, and their temp files go to the folder the SCP
names (the storage root's own, so that storing is a link on one file system,
not a copy). A temp file stops growing past the instance limit; the handler
refuses it then, by the size it counted.

The DUL reads a PDU whole, of whatever length its header announces: a PDU
longer than the SCP accepts (its maximum PDU, or a floor for the
association request) ends the connection instead.
"""

from __future__ import annotations

import os
import tempfile
import threading
import types
from contextlib import suppress
from pathlib import Path
from typing import Any
from uuid import uuid4

from pynetdicom import _config as pynetdicom_config
from pynetdicom import dimse_messages
from pynetdicom.association import Association

# An A-ASSOCIATE-RQ with 128 contexts of every transfer syntax is well under this.
MIN_PDU_READ = 1 << 20
# pynetdicom writes the file meta (built from the request's UIDs) ahead of the
# data set: room for it before the size limit stops the writing.
META_ALLOWANCE = 1 << 16


class SpoolFile:
    """What pynetdicom writes a received data set to: a file in the SCP's own temp
    folder that counts what it was given and keeps no more than ``limit`` bytes."""

    def __init__(self, folder: Path, limit: int) -> None:
        # Why the bytes could not be written (a full disk, the folder gone):
        # the handler answers Out of Resources; raised here, it would end the
        # association instead.
        self.failure: OSError | None = None
        try:
            fd, name = tempfile.mkstemp(dir=folder, prefix="rx-", suffix=".part")
        except OSError as exc:
            # Nothing to write to: the data set is counted and dropped, under a
            # name no file has (the handler removes "it" as any other).
            self.failure = exc
            fd, name = os.open(os.devnull, os.O_WRONLY), str(folder / f"rx-{uuid4().hex}.none")
        self.file = os.fdopen(fd, "wb", buffering=0)
        self.name = name
        self.limit = limit
        self.written = 0  # bytes given, kept or not
        self.overflowed = False

    def write(self, data: bytes | memoryview) -> int:
        self.written += len(data)
        if self.written > self.limit:
            self.overflowed = True  # the rest is counted, not kept: refused anyway
        if self.overflowed or self.failure is not None:
            return len(data)
        view = memoryview(data)
        try:
            while view:  # a raw write may take only part (a disk filling up)
                view = view[self.file.write(view) or 0 :]
        except OSError as exc:
            self.failure = exc
        return len(data)

    def close(self) -> None:
        self.file.close()

    def discard(self) -> None:
        """Close and remove the file: its data set was never (or will never be)
        stored."""
        with suppress(OSError):
            self.file.close()
        Path(self.name).unlink(missing_ok=True)

    def sync_and_close(self, fsync: bool) -> OSError | None:
        """Close, the bytes made durable first (``fsync``); what kept them from
        being. Run beside the parsing of the header, so that the disk's time
        and the parser's overlap."""
        failure = self.failure
        if fsync and failure is None:
            try:
                os.fsync(self.file.fileno())
            except OSError as exc:
                failure = exc
        try:
            self.file.close()
        except OSError as exc:
            failure = failure or exc
        return failure


class _PerThreadConfig(types.ModuleType):
    """pynetdicom's ``_config`` as its message decoder reads it: as is, except
    ``STORE_RECV_CHUNKED_DATASET``, on only in the DUL threads of this SCP."""

    def __getattr__(self, name: str) -> Any:
        return getattr(pynetdicom_config, name)

    @property
    def STORE_RECV_CHUNKED_DATASET(self) -> bool:  # noqa: N802 (pynetdicom's name)
        return getattr(threading.current_thread(), "qrfarm_spool", None) is not None or bool(
            pynetdicom_config.STORE_RECV_CHUNKED_DATASET
        )


def _named_temporary_file(*args: Any, **kwargs: Any) -> Any:
    spool: tuple[Path, int] | None = getattr(threading.current_thread(), "qrfarm_spool", None)
    if spool is None:
        return _ORIGINAL_NAMED_TEMPORARY_FILE(*args, **kwargs)
    return SpoolFile(*spool)


_ORIGINAL_NAMED_TEMPORARY_FILE = vars(dimse_messages)["NamedTemporaryFile"]
_install_lock = threading.Lock()


def install() -> None:
    """Make pynetdicom's decoder read the switch per thread (once per process)."""
    with _install_lock:
        names = vars(dimse_messages)
        if isinstance(names["_config"], _PerThreadConfig):
            return
        names["_config"] = _PerThreadConfig("pynetdicom._config")
        names["NamedTemporaryFile"] = _named_temporary_file


def spool_to(assoc: Association, folder: Path, max_instance_bytes: int, max_pdu: int) -> None:
    """Have this association's data sets written to ``folder`` (at most
    ``max_instance_bytes`` kept each), and its PDUs read only up to ``max_pdu``.
    Called before its threads start (EVT_CONN_OPEN)."""
    install()
    dul: Any = assoc.dul
    dul.qrfarm_spool = (folder, max_instance_bytes + META_ALLOWANCE)
    limit = max(max_pdu, MIN_PDU_READ) if max_pdu else None
    sock: Any = dul.socket
    if limit is None or sock is None:
        return
    read = sock.recv

    def bounded_recv(nr_bytes: int) -> bytearray:
        if nr_bytes > limit:
            # The DUL takes this as the connection closing (Evt17), and ends it.
            raise OSError(f"a PDU of {nr_bytes} bytes announced, {limit} accepted")
        return read(nr_bytes)  # type: ignore[no-any-return]

    sock.recv = bounded_recv
