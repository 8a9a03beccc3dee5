"""The storage SCP service: accept, store, correlate, record.

Every instance a C-MOVE brings in is written to disk durably and recorded in
the database against the job that asked for it (or as an orphan) before the
C-STORE is answered with success.
"""

from .service import StorageScp, bound_socket

__all__ = ["StorageScp", "bound_socket"]
