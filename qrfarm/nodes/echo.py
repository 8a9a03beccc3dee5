"""C-ECHO of a registered node, as the REST API, the console and the Client ask for it."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.config import Settings
from qrfarm.dicom import Connection, Operation, StatusCategory, Timeouts, qr_contexts
from qrfarm.errors import QrfarmError, UnknownNode
from qrfarm.jobs.nodes import node_of
from qrfarm.models import NodeRecord

UNREACHABLE = "unreachable"


def echo(
    sessions: sessionmaker[Session], settings: Settings, name: str, *, timeout_s: float = 10.0
) -> dict[str, Any]:
    """The answer: status, category (``unreachable`` when no association could be
    made, ``detail`` saying why), ok, elapsed_ms. Every timeout is capped at
    ``timeout_s`` (connecting at half of it): a person is waiting for it.
    UnknownNode if the node is not registered; TargetNotAllowed if its host is
    outside the allow-list."""
    with sessions() as session:
        row = session.scalar(select(NodeRecord).where(NodeRecord.name == name))
        if row is None:
            raise UnknownNode(f"node {name!r} is not registered")
        target = node_of(row)
    settings.check_target(target.host)
    timeouts = Timeouts(
        acse=min(settings.acse_timeout, timeout_s),
        dimse=min(settings.dimse_timeout, timeout_s),
        network=min(settings.network_timeout, timeout_s),
        connect=min(settings.connect_timeout, timeout_s / 2),
    )
    started = time.monotonic()
    result: dict[str, Any] = {"node": name}
    try:
        with Connection.open(
            target, qr_contexts([Operation.ECHO]), calling_ae=settings.ae_title, timeouts=timeouts
        ) as conn:
            answer = conn.echo()
    except QrfarmError as exc:
        result.update(status="", category=UNREACHABLE, ok=False, detail=str(exc))
    else:
        result.update(
            status=f"0x{answer.status:04X}",
            category=answer.category.value,
            ok=answer.category is StatusCategory.SUCCESS,
            detail=answer.summary(),
        )
    result["elapsed_ms"] = round((time.monotonic() - started) * 1000, 1)
    return result
