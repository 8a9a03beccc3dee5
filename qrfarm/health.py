"""Is this farm's storage SCP answering: the C-ECHO behind `qrfarm probe scp` and
the API's health route, from the farm's own probe AE title (which the SCP
admits for C-ECHO and refuses any C-STORE)."""

from __future__ import annotations

from .config import Settings
from .dicom import Connection, Node, Operation, StatusCategory, Timeouts, qr_contexts

PROBE_TIMEOUT_S = 5.0


def local_address(host: str) -> str:
    """Where to reach a service of this host that listens on ``host``."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host  # noqa: S104


def echo_storage_scp(settings: Settings, timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """C-ECHO the storage SCP; what it answered, or a QrfarmError / RuntimeError saying why not."""
    node = Node(settings.scp_ae_title, local_address(settings.scp_host), settings.scp_port)
    timeouts = Timeouts(connect=timeout_s, acse=timeout_s, dimse=timeout_s)
    with Connection.open(
        node, qr_contexts([Operation.ECHO]), calling_ae=settings.probe_ae_title, timeouts=timeouts
    ) as conn:
        answer = conn.echo()
    if answer.category is not StatusCategory.SUCCESS:
        raise RuntimeError(f"{node}: C-ECHO answered {answer.summary()}")
    return f"C-ECHO to {node} succeeded"
