"""Is an encoded data set whole? A walk over its element headers.

pydicom reads a data set cut short without complaint (the last value just
comes out shorter), so success must not be answered on its say-so. This walk
checks that every element's declared length fits in the bytes that arrived,
through sequences and encapsulated pixel data of undefined length, and that
every undefined length is closed by its delimiter.
"""

from __future__ import annotations

import struct

from qrfarm.errors import DatasetTruncated

UNDEFINED = 0xFFFFFFFF
ITEM = (0xFFFE, 0xE000)
ITEM_END = (0xFFFE, 0xE00D)
SEQUENCE_END = (0xFFFE, 0xE0DD)
# Explicit VRs with a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}


def check_complete(
    data: bytes | bytearray | memoryview, *, implicit_vr: bool, little_endian: bool
) -> None:
    """Raise DatasetTruncated (naming the element) unless ``data`` is a whole data set.

    ``data`` may be a memoryview of a mapped file: only element headers are
    read, so the values (pixel data above all) are never brought into memory."""
    with memoryview(data) as view:
        end = _Walker(view, implicit_vr, "<" if little_endian else ">").dataset(0, len(view), None)
        if end != len(view):
            raise DatasetTruncated(f"{len(view) - end} stray bytes after the last element")


class _Walker:
    def __init__(self, data: memoryview, implicit_vr: bool, order: str) -> None:
        self.data = data
        self.implicit = implicit_vr
        self.order = order

    def _unpack(self, fmt: str, offset: int) -> tuple[int, ...]:
        size = struct.calcsize(self.order + fmt)
        if offset + size > len(self.data):
            raise DatasetTruncated(f"element header cut short at byte {offset}")
        return struct.unpack_from(self.order + fmt, self.data, offset)

    def dataset(self, offset: int, limit: int, closer: tuple[int, int] | None) -> int:
        """Walk elements from ``offset`` to ``limit`` (or to ``closer``); return the end."""
        while offset < limit:
            group, element = self._unpack("HH", offset)
            tag = (group, element)
            if tag == closer:
                self._unpack("L", offset + 4)
                return offset + 8
            if group == 0xFFFE:  # item tags are always implicit
                raise DatasetTruncated(f"unexpected delimiter ({group:04X},{element:04X})")
            vr, length, offset = self._header(offset)
            if length == UNDEFINED:
                # A sequence, or encapsulated pixel data (items of fragments).
                offset = self.items(offset, (group, element))
                continue
            if offset + length > len(self.data):
                raise DatasetTruncated(
                    f"({group:04X},{element:04X}) announces {length} bytes, "
                    f"{len(self.data) - offset} arrived"
                )
            if vr == b"SQ" and length:
                self.defined_items(offset, offset + length)
            offset += length
        if closer is not None:
            raise DatasetTruncated("a sequence or item of undefined length is never closed")
        return offset

    def _header(self, offset: int) -> tuple[bytes | None, int, int]:
        if self.implicit:
            (length,) = self._unpack("L", offset + 4)
            return None, length, offset + 8
        if offset + 6 > len(self.data):
            raise DatasetTruncated(f"element header cut short at byte {offset}")
        vr = bytes(self.data[offset + 4 : offset + 6])
        if vr in _LONG_VRS:
            (length,) = self._unpack("L", offset + 8)
            return vr, length, offset + 12
        (length,) = self._unpack("H", offset + 6)
        return vr, length, offset + 8

    def items(self, offset: int, owner: tuple[int, int]) -> int:
        """Items of an undefined-length sequence or pixel data, up to its delimiter."""
        while True:
            group, element = self._unpack("HH", offset)
            (length,) = self._unpack("L", offset + 4)
            offset += 8
            if (group, element) == SEQUENCE_END:
                return offset
            if (group, element) != ITEM:
                raise DatasetTruncated(f"({owner[0]:04X},{owner[1]:04X}) holds a non-item element")
            if length == UNDEFINED:
                offset = self.dataset(offset, len(self.data), ITEM_END)
            else:
                if offset + length > len(self.data):
                    raise DatasetTruncated(
                        f"an item of ({owner[0]:04X},{owner[1]:04X}) is cut short"
                    )
                offset += length

    def defined_items(self, offset: int, limit: int) -> None:
        """Items of a sequence of defined length; each item's content walked too."""
        while offset < limit:
            group, element = self._unpack("HH", offset)
            (length,) = self._unpack("L", offset + 4)
            offset += 8
            if (group, element) != ITEM:
                raise DatasetTruncated("a sequence of defined length holds a non-item element")
            if length == UNDEFINED:
                offset = self.dataset(offset, limit, ITEM_END)
            else:
                if offset + length > limit:
                    raise DatasetTruncated("an item runs past the end of its sequence")
                self.dataset(offset, offset + length, None)
                offset += length
