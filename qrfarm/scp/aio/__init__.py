"""The storage SCP's asyncio receive path: the DICOM upper layer for the
storage service only (C-STORE and C-ECHO), on pynetdicom's PDU, item and
DIMSE codecs and its SOP class and transfer syntax tables.

pynetdicom runs two threads per association, reads 4 KiB at a time and polls
its reactor every millisecond, all under one GIL: that caps any handler on
its receive path. Here one event loop serves every association of the
process; data sets go to their temp file as their fragments arrive, and what
blocks (header parse, fsync, link, database) runs in a thread pool.
"""

from .server import AioStorageServer

__all__ = ["AioStorageServer"]
