"""Webhook notifications, written to the outbox where a job or prefetch ends.

The row is added in the same transaction as the state change that ends the
job, so a notification is never lost between the two; the scheduler's
delivery loop (:mod:`qrfarm.jobs.webhooks`) sends it. The body is fixed here:
every retry sends, and signs, the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from qrfarm.errors import InvalidCallback, PermanentError
from qrfarm.models import Job, NodeRecord, Prefetch, WebhookDelivery, utcnow

JOB_ENDED = "job.ended"
PREFETCH_ENDED = "prefetch.ended"


def validate_callback_url(
    url: str, *, check_target: Callable[[str], None] | None, secret_configured: bool
) -> str:
    """The URL, or InvalidCallback naming the rule it breaks."""
    if not secret_configured:
        raise InvalidCallback(url, "webhooks need a shared secret: set QRFARM_WEBHOOK_SECRET")
    if len(url) > 2048:
        raise InvalidCallback(url[:64] + "…", "longer than 2048 characters")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise InvalidCallback(url, f"not a valid URL ({exc})") from exc
    if parts.scheme not in ("http", "https"):
        raise InvalidCallback(url, "the scheme must be http or https")
    try:
        host = parts.hostname
        _ = parts.port  # raises on a port out of range
    except ValueError as exc:
        raise InvalidCallback(url, f"not a valid URL ({exc})") from exc
    if not host:
        raise InvalidCallback(url, "names no host")
    if parts.username or parts.password:
        raise InvalidCallback(url, "credentials in the URL are not accepted")
    if check_target is not None:
        try:
            check_target(host)
        except PermanentError as exc:
            raise InvalidCallback(url, str(exc)) from exc
    return url


def _dump(payload: dict[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)


def job_outcome(job: Job, node_name: str | None) -> dict[str, Any]:
    """What a job is and how it ended: the core of its summary and of its webhook."""
    return {
        "id": job.id,
        "kind": job.kind.value,
        "state": job.state.value,
        "node": node_name,
        "level": job.level,
        "destination": job.destination,
        "external_reference": job.external_reference,
        "expected": job.expected_count,
        "reported": {
            "completed": job.reported_completed,
            "failed": job.reported_failed,
            "warning": job.reported_warning,
        },
        "recorded": job.recorded_count,
        "failed_uids": list(job.failed_uids or []),
        "missing_uids": list(job.missing_uids or []),
        "error": job.error,
        "ended_at": job.ended_at.isoformat() if job.ended_at else None,
    }


def job_payload(session: Session, job: Job) -> dict[str, Any]:
    node = session.scalar(select(NodeRecord.name).where(NodeRecord.id == job.node_id))
    return {"event": JOB_ENDED, "job": {**job_outcome(job, node), "prefetch_id": job.prefetch_id}}


def notify_job_ended(session: Session, job: Job) -> None:
    if job.callback_url:
        session.add(
            WebhookDelivery(
                event=JOB_ENDED,
                job_id=job.id,
                url=job.callback_url,
                body=_dump(job_payload(session, job)),
                next_attempt_at=utcnow(),
            )
        )


def notify_prefetch_ended(session: Session, prefetch: Prefetch, summary: dict[str, Any]) -> None:
    if prefetch.callback_url:
        session.add(
            WebhookDelivery(
                event=PREFETCH_ENDED,
                prefetch_id=prefetch.id,
                url=prefetch.callback_url,
                body=_dump({"event": PREFETCH_ENDED, "prefetch": summary}),
                next_attempt_at=utcnow(),
            )
        )
