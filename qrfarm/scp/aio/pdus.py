"""Reading PDUs off a connection's stream, never more than a limit into memory.

The idle timeout is for a peer that sends nothing, not for a slow one: a
large PDU is read a piece at a time, each piece restarting it (one whole PDU
per timeout, at 60 s and 1 MiB, would cut links below 17 KB/s).
"""

from __future__ import annotations

import asyncio

from . import messages

# A larger PDU's bytes are taken in pieces of this size, each restarting the
# idle timeout: a link must bring at least this much per timeout.
PROGRESS_BYTES = 64 << 10


async def read_head(reader: asyncio.StreamReader, limit: int) -> tuple[bytes, int, int]:
    """A PDU's header: its bytes, type and length (at most ``limit``)."""
    head = await reader.readexactly(messages.PDU_HEADER.size)
    pdu_type, length = messages.PDU_HEADER.unpack(head)
    if length > limit:
        # Never read into memory: the connection ends instead.
        raise ConnectionError(f"a PDU of {length} bytes announced, {limit} accepted")
    return head, pdu_type, length


async def read_pdu(reader: asyncio.StreamReader, limit: int) -> tuple[int, bytes]:
    """One whole PDU, header included."""
    head, pdu_type, length = await read_head(reader, limit)
    return pdu_type, head + await reader.readexactly(length)


async def read_pdu_while_sent(
    reader: asyncio.StreamReader, limit: int, idle: asyncio.Timeout, idle_timeout_s: float
) -> tuple[int, bytes]:
    """One whole PDU; while a large one keeps coming, ``idle`` is pushed back
    by ``idle_timeout_s`` after each piece."""
    head, pdu_type, length = await read_head(reader, limit)
    if length <= PROGRESS_BYTES:
        return pdu_type, head + await reader.readexactly(length)
    loop = asyncio.get_running_loop()
    idle.reschedule(loop.time() + idle_timeout_s)  # the header came: not idle
    # Pieces as the bytes come, joined once (not a buffer of the announced
    # size: a header alone pins no memory).
    pieces = [head]
    left = length
    while left:
        piece = await reader.readexactly(min(PROGRESS_BYTES, left))
        pieces.append(piece)
        left -= len(piece)
        idle.reschedule(loop.time() + idle_timeout_s)
    return pdu_type, b"".join(pieces)
