"""Webhook notifications, written to the outbox where a job or prefetch ends.

The row is added in the same transaction as the state change that ends the
job, so a notification is never lost between the two; the scheduler's
delivery loop (:mod:`qrfarm.notify.delivery`) sends it. The body is fixed
here: every retry sends the same bytes.

A body carries ids, states and counts: what a workflow engine needs to act,
and to fetch the rest with its token (``GET /jobs/{id}``). A prefetch's
patient keys (patient ID, accession, the studies chosen) go in only when its
rule asks for them (``webhook_patient_keys``) and the callback is https.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from qrfarm.models import Job, NodeRecord, Prefetch, WebhookDelivery, utcnow

JOB_ENDED = "job.ended"
PREFETCH_ENDED = "prefetch.ended"
# What a prefetch rule sets to have the patient keys in its webhook body.
PATIENT_KEYS_OPTION = "webhook_patient_keys"
PREFETCH_PATIENT_KEYS = ("patient_id", "current_accession", "current_study_uid", "selected")
PREFETCH_FIELDS = (
    "id",
    "rule_name",
    "state",
    "external_reference",
    "studies",
    "recorded",
    "destination",
    "delivered",
    "jobs",
    "created_at",
    "ended_at",
)


def _dump(payload: dict[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)


def job_body(job: Job, node_name: str | None) -> dict[str, Any]:
    """A job's webhook body: ids, states and counts; no identifier, no UIDs, no free text."""
    return {
        "event": JOB_ENDED,
        "job": {
            "id": job.id,
            "kind": job.kind.value,
            "state": job.state.value,
            "node": node_name,
            "level": job.level,
            "external_reference": job.external_reference,
            "prefetch_id": job.prefetch_id,
            "expected": job.expected_count,
            "reported": {
                "completed": job.reported_completed,
                "failed": job.reported_failed,
                "warning": job.reported_warning,
            },
            "recorded": job.recorded_count,
            # A move to another node: its AE title, and how many instances it
            # confirmed holding, and how (storage commitment or C-FIND).
            "destination": job.destination if job.destination_node_id is not None else None,
            "confirmed": job.confirmed_count,
            "verified_by": job.verified_by,
            "failed": len(job.failed_uids or []),
            "missing": len(job.missing_uids or []),
            "ended_at": job.ended_at.isoformat() if job.ended_at else None,
        },
    }


def prefetch_body(summary: dict[str, Any], rule: dict[str, Any], url: str) -> dict[str, Any]:
    """A prefetch's webhook body from its summary: ids, states and counts, and
    the patient keys only when the rule asks for them and the URL is https."""
    body = {key: summary.get(key) for key in PREFETCH_FIELDS}
    if rule.get(PATIENT_KEYS_OPTION) and urlsplit(url).scheme == "https":
        body.update({key: summary.get(key) for key in PREFETCH_PATIENT_KEYS})
    return {"event": PREFETCH_ENDED, "prefetch": body}


def notify_job_ended(session: Session, job: Job) -> None:
    if job.callback_url:
        node = session.scalar(select(NodeRecord.name).where(NodeRecord.id == job.node_id))
        session.add(
            WebhookDelivery(
                event=JOB_ENDED,
                job_id=job.id,
                url=job.callback_url,
                body=_dump(job_body(job, node)),
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
                body=_dump(prefetch_body(summary, prefetch.rule, prefetch.callback_url)),
                next_attempt_at=utcnow(),
            )
        )
