"""What workflow engines connect through: API tokens, webhooks, prefetches and their rules."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, string_enum, utcnow


class ApiToken(Base):
    """A bearer token of the REST API. Only its SHA-256 is kept: a token is
    32 random bytes, so a plain hash is enough (no password stretching)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # What it may do: scope names separated by spaces (read, submit, admin).
    scopes: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None]


class ConsoleSession(Base):
    """A live sign-in to the console. Its cookie names it by a random id, kept
    here only as its SHA-256; signing out removes the row, so a copy of the
    cookie (its signature and expiry still good) ends with it."""

    __tablename__ = "console_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[int] = mapped_column(
        ForeignKey("api_tokens.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    GAVE_UP = "gave_up"


class WebhookDelivery(Base):
    """A notification to send: written in the transaction that ends the job or
    prefetch (an outbox), so that it can never be lost between the two."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event: Mapped[str] = mapped_column(String(32))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    prefetch_id: Mapped[int | None] = mapped_column(ForeignKey("prefetches.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    # The exact bytes signed and sent, the same on every retry.
    body: Mapped[str] = mapped_column(Text)
    state: Mapped[DeliveryState] = mapped_column(
        string_enum(DeliveryState, "delivery_state"), default=DeliveryState.PENDING
    )
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[dt.datetime | None]

    __table_args__ = (Index("ix_webhook_deliveries_state_next", "state", "next_attempt_at"),)


class WebhookAttempt(Base):
    """One POST of a delivery and what the receiver answered."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(Integer)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer)


class PrefetchRule(Base):
    """Which prior studies to fetch for a patient, and from which nodes in order."""

    __tablename__ = "prefetch_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # The rule's fields as qrfarm.workflow.rules.Rule holds them.
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class PrefetchState(enum.StrEnum):
    SEARCHING = "searching"
    DETAILING = "detailing"  # SERIES-level finds for modalities a PACS did not give
    MOVING = "moving"
    COMPLETED = "completed"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELLED = "cancelled"


PREFETCH_ENDED = frozenset(
    {PrefetchState.COMPLETED, PrefetchState.PARTIAL, PrefetchState.FAILED, PrefetchState.CANCELLED}
)


class Prefetch(Base):
    """A patient's priors fetched by one rule: find jobs first, then move jobs."""

    __tablename__ = "prefetches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    rule_name: Mapped[str | None] = mapped_column(String(64))
    # The rule as it was when the prefetch started: editing a rule later
    # does not change a prefetch under way.
    rule: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The study being ordered (its priors are wanted, not itself).
    current_accession: Mapped[str | None] = mapped_column(String(64))
    current_study_uid: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[PrefetchState] = mapped_column(
        string_enum(PrefetchState, "prefetch_state"), default=PrefetchState.SEARCHING
    )
    # The priors chosen: study UID, node, date, modalities, and whether it was
    # already held or which job moves it.
    selected: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    callback_url: Mapped[str | None] = mapped_column(String(2048))
    external_reference: Mapped[str | None] = mapped_column(String(255), unique=True)
    # A digest of the message that started it (an HL7 order): a resend under the
    # same control ID must carry the same content.
    trigger_digest: Mapped[str | None] = mapped_column(String(64))
    # Every identifier of the patient, with its assigning authority
    # ({"id", "issuer"}): each node is searched with the one of its own.
    patient_identifiers: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # Node name -> why it was not searched, or what of its answers was left out.
    node_notes: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    # The order it was started for (sender and placer/filler order number): a
    # later message of that order (XO, CA, DC) finds it by this.
    order_key: Mapped[str | None] = mapped_column(String(255), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[dt.datetime | None]

    __table_args__ = (Index("ix_prefetches_state", "state"),)
