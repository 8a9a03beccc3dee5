"""DICOM TLS for the storage SCP: its server context, and the handshake of one connection.

The handshake runs in the connection's own thread, after any PROXY protocol
header (HAProxy sends that header in the clear, before the TLS bytes) and
within the associate timeout: a peer that connects and stays silent, or
speaks plain DICOM to the TLS port, holds up only its own connection and is
closed. pynetdicom's own ``ssl_context`` would shake hands in the accepting
loop, where one silent peer stops every other connection.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from pathlib import Path

from qrfarm.errors import InvalidTlsSettings

log = logging.getLogger(__name__)


def server_context(
    cert_file: Path | None, key_file: Path | None, ca_file: Path | None = None
) -> ssl.SSLContext:
    """The SCP's TLS context: its certificate, and with ``ca_file`` a client
    certificate that CA signs is required of every peer."""
    if cert_file is None or key_file is None:
        raise InvalidTlsSettings(
            "the storage SCP's TLS port needs its certificate and key "
            "(QRFARM_SCP_TLS_CERT_FILE, QRFARM_SCP_TLS_KEY_FILE)"
        )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # BCP 195, as DICOM's TLS profiles ask
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file))
        if ca_file is not None:
            ctx.load_verify_locations(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise InvalidTlsSettings(f"the storage SCP's TLS files cannot be loaded: {exc}") from exc
    ctx.verify_mode = ssl.CERT_REQUIRED if ca_file is not None else ssl.CERT_NONE
    return ctx


def handshake(
    request: socket.socket, context: ssl.SSLContext, timeout_s: float, peer: str
) -> ssl.SSLSocket | None:
    """``request`` wrapped in TLS once the handshake is done; None (the
    connection closed) when it fails or does not finish within ``timeout_s``."""
    previous = request.gettimeout()
    request.settimeout(timeout_s)
    try:
        wrapped = context.wrap_socket(request, server_side=True)
    except (OSError, ValueError) as exc:  # ssl.SSLError and timeouts are OSErrors
        log.warning("TLS connection from %s closed: %s", peer, exc)
        with contextlib.suppress(OSError):
            request.close()
        return None
    wrapped.settimeout(previous)
    return wrapped
