"""The DICOMweb protocol layer (PS3.18): QIDO-RS, WADO-RS and STOW-RS through
dicomweb-client on a guarded HTTP session.

Like :mod:`qrfarm.dicom` beside it, it knows nothing of jobs, the database or
the settings: it imports ``errors`` and ``dicom`` only. Where a URL may go
(the outbound allow-list) is checked by the callers, where targets enter.
"""

from .service import (
    AUTH_KINDS,
    AuthKind,
    WebClient,
    WebService,
    WebTimeouts,
    check_base_url,
    open_client,
    url_host,
)

__all__ = [
    "AUTH_KINDS",
    "AuthKind",
    "WebClient",
    "WebService",
    "WebTimeouts",
    "check_base_url",
    "open_client",
    "url_host",
]
