"""Sending instances on by C-STORE: an association as a Storage SCU.

The farm forwards what it holds in the transfer syntax it holds it in, so
the contexts proposed are one per (SOP class, transfer syntax) held, and a
file is sent from its bytes on disk, not decoded and encoded again. Where
the caller allows conversion, a context per SOP class proposes the
uncompressed syntaxes too, for an instance the peer will not take as held.
The association itself is :class:`qrfarm.dicom.store_link.StoreLink` (the
upper layer on a plain socket), not pynetdicom's threads.
"""

from __future__ import annotations

import logging
import mmap
import struct
import zlib
from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import build_context
from pynetdicom.dsutils import encode, split_dataset
from pynetdicom.presentation import PresentationContext

from qrfarm.errors import (
    AssociationAborted,
    HeldInstanceMismatch,
    PresentationContextError,
    QrfarmError,
)

from .connection import Timeouts
from .contexts import MAX_CONTEXTS
from .model import VERIFICATION_SOP_CLASS
from .node import Node, validate_ae_title
from .store_link import StoreLink

log = logging.getLogger(__name__)

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
NATIVE = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian})
# What is read of a held data set to check which instance it is.
_HEAD_BYTES = 64 << 10
_SOP_INSTANCE_UID_TAG = 0x00080018


@dataclass(frozen=True)
class Held:
    """One kind of instance the sender holds: a SOP class in a transfer syntax."""

    sop_class_uid: str
    transfer_syntax: str


def held_contexts(held: Iterable[Held], *, with_fallback: bool) -> list[PresentationContext]:
    """Verification, then one context per SOP class and held syntax;
    ``with_fallback``: one more per SOP class proposing the uncompressed
    syntaxes (for a conversion, when the peer refuses the held syntax).

    Raises PresentationContextError past 128 contexts (PS3.8)."""
    # Verification too: a peer that refuses every storage context asked for
    # still associates (Orthanc aborts an association with nothing accepted),
    # and each refusal can then be told for what it is.
    contexts = [build_context(VERIFICATION_SOP_CLASS, list(UNCOMPRESSED))]
    classes: dict[str, set[str]] = {}
    for item in dict.fromkeys(held):
        classes.setdefault(item.sop_class_uid, set()).add(item.transfer_syntax)
        contexts.append(build_context(UID(item.sop_class_uid), [UID(item.transfer_syntax)]))
    if with_fallback:
        # Both uncompressed syntaxes, whatever is held: a peer that takes one
        # of them only (Implicit VR Little Endian, say) picks it here.
        for sop_class in classes:
            contexts.append(build_context(UID(sop_class), list(UNCOMPRESSED)))
    if len(contexts) > MAX_CONTEXTS:
        raise PresentationContextError(
            f"{len(contexts)} presentation contexts needed; an association holds at most "
            f"{MAX_CONTEXTS} (PS3.8 9.3.2.2)"
        )
    return contexts


@dataclass(frozen=True)
class StoreOutcome:
    """The peer's answer to one C-STORE."""

    status: int
    transfer_syntax: str
    error_comment: str | None = None

    @property
    def ok(self) -> bool:
        # Success, or a warning (B000, B006, B007): the peer holds the instance.
        return self.status == 0 or 0xB000 <= self.status <= 0xBFFF


class StoreConnection:
    """An open association proposing storage contexts as SCU. Use :meth:`open`."""

    def __init__(self, node: Node, link: StoreLink) -> None:
        self.node = node
        self._link: StoreLink | None = link
        self._accepted = set(link.contexts)
        self._stopped: QrfarmError | None = None
        self._next_message_id = 1

    @classmethod
    def open(
        cls,
        node: Node,
        contexts: Sequence[PresentationContext],
        *,
        calling_ae: str,
        timeouts: Timeouts | None = None,
    ) -> StoreConnection:
        """Associate with ``node`` proposing ``contexts``."""
        if not contexts:
            raise PresentationContextError("no presentation context asked for")
        timeouts = timeouts or Timeouts()
        link = StoreLink.open(
            node,
            contexts,
            calling_ae=validate_ae_title(calling_ae, "calling AE title"),
            connect_timeout=timeouts.connect,
            acse_timeout=timeouts.acse,
            dimse_timeout=timeouts.dimse,
        )
        return cls(node, link)

    # -- what the peer accepted ----------------------------------------------------

    @property
    def accepted(self) -> set[tuple[str, str]]:
        """(SOP class, transfer syntax) pairs accepted, for the SCU role."""
        return set(self._accepted)

    def accepts(self, sop_class: str, transfer_syntax: str) -> bool:
        return (sop_class, transfer_syntax) in self._accepted

    def uncompressed_for(self, sop_class: str) -> str | None:
        """An uncompressed syntax the peer accepted for ``sop_class``, explicit first."""
        for syntax in UNCOMPRESSED:
            if (sop_class, str(syntax)) in self._accepted:
                return str(syntax)
        return None

    # -- sending ---------------------------------------------------------------------

    def send_file(
        self, path: Path, sop_class: str, sop_instance: str, transfer_syntax: str
    ) -> StoreOutcome:
        """C-STORE of a Part-10 file's data set as its bytes are on disk, in its own
        ``transfer_syntax`` (which the peer must have accepted for its SOP class).
        The file is mapped, not read into memory: an instance may be gigabytes,
        and each of a forward's associations sends one."""
        with path.open("rb") as handle:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            with memoryview(mapped) as whole, _dataset_bytes(whole, path) as data:
                check_identity(_names(data, UID(transfer_syntax)), sop_class, sop_instance)
                return self._send(sop_class, sop_instance, transfer_syntax, data)
        finally:
            # Slices still referenced (an exception's frames) keep it mapped
            # until they are gone; closing then would raise.
            with suppress(BufferError):
                mapped.close()

    def send_dataset(self, dataset: Dataset) -> StoreOutcome:
        """C-STORE of a data set in its file meta's transfer syntax, or for an
        uncompressed one in whichever uncompressed syntax the peer accepted."""
        sop_class, held = str(dataset.SOPClassUID), str(dataset.file_meta.TransferSyntaxUID)
        syntax = held
        if not self.accepts(sop_class, held) and held in NATIVE:
            syntax = self.uncompressed_for(sop_class) or held
        ts = UID(syntax)
        data = encode(dataset, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
        if data is None:
            raise PresentationContextError(f"the data set could not be encoded in {ts.name}")
        return self._send(sop_class, str(dataset.SOPInstanceUID), syntax, data)

    def _send(
        self, sop_class: str, sop_instance: str, syntax: str, data: bytes | memoryview
    ) -> StoreOutcome:
        if self._stopped is not None:
            raise self._stopped
        link = self._link
        if link is None:
            raise AssociationAborted(f"the association with {self.node} is no longer open")
        context_id = link.contexts.get((sop_class, syntax))
        if context_id is None:
            raise PresentationContextError(
                f"{self.node} accepted no context for {sop_class} in {UID(syntax).name}"
            )
        message_id = self._next_message_id
        self._next_message_id = message_id % 0xFFFF + 1
        try:
            status, comment = link.store(context_id, sop_class, sop_instance, message_id, data)
        except QrfarmError:
            self._link = None
            if self._stopped is not None:
                raise self._stopped from None
            raise
        return StoreOutcome(status, syntax, comment)

    # -- life -----------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._link is not None and self._stopped is None

    @property
    def stopped(self) -> QrfarmError | None:
        return self._stopped

    def stop(self, reason: QrfarmError) -> None:
        """Stop sending (a lost permit or lease): abort, and refuse any later send."""
        self._stopped = reason
        self.abort()

    def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.release()

    def abort(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.abort()

    def __enter__(self) -> StoreConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def check_identity(names: tuple[str, str], sop_class: str, sop_instance: str) -> None:
    """HeldInstanceMismatch unless a data set's (SOP Class UID, SOP Instance
    UID) are those its record names."""
    if names != (sop_class, sop_instance):
        raise HeldInstanceMismatch(
            "the held file is not the instance recorded (its data set names another "
            "SOP class or instance): not sent"
        )


def _names(data_set: memoryview, syntax: UID) -> tuple[str, str]:
    """SOP Class and Instance UIDs of an encoded data set, from its first bytes
    (they come before anything large); empty when they cannot be read."""
    head = bytes(data_set[:_HEAD_BYTES])
    try:
        if syntax.is_deflated:
            head = zlib.decompressobj(-zlib.MAX_WBITS).decompress(head, _HEAD_BYTES)
        ds = read_dataset(
            BytesIO(head),
            syntax.is_implicit_VR,
            syntax.is_little_endian,
            stop_when=lambda tag, _vr, _length: int(tag) > _SOP_INSTANCE_UID_TAG,
        )
        return str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", ""))
    except Exception:  # noqa: BLE001 (unreadable: it names nothing, and is not sent)
        return "", ""


def _dataset_bytes(data: bytes | memoryview, path: Path) -> memoryview:
    """The data set of a Part-10 file: what follows its file meta."""
    # Preamble, "DICM", then (0002,0000) UL of the meta group's length.
    if data[128:132] == b"DICM" and data[132:138] == b"\x02\x00\x00\x00UL":
        (group_length,) = struct.unpack_from("<I", data, 140)
        return memoryview(data)[144 + group_length :]
    _meta, offset = split_dataset(path)
    return memoryview(data)[offset:]
