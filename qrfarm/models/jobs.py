"""Jobs, their attempts, every DICOM response of an attempt, and C-FIND results."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .base import Base, string_enum, utcnow


class JobKind(enum.StrEnum):
    FIND = "find"
    GET = "get"
    MOVE = "move"
    # C-STORE of what another job holds to the job's node (qrfarm.delivery).
    FORWARD = "forward"


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RECONCILING = "reconciling"
    COMPLETED = "completed"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELLED = "cancelled"


# StrEnum members: "completed" in ENDED_STATES holds for the plain string too.
ENDED_STATES = frozenset(
    {JobState.COMPLETED, JobState.PARTIAL, JobState.FAILED, JobState.CANCELLED}
)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[JobKind] = mapped_column(string_enum(JobKind, "job_kind"))
    root: Mapped[str] = mapped_column(String(16))
    level: Mapped[str] = mapped_column(String(16))
    identifier: Mapped[dict[str, Any]] = mapped_column(JSON)  # DICOM JSON
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"))
    destination: Mapped[str | None] = mapped_column(String(16))
    # The registered node a move sends to (its AE title is ``destination``);
    # none: the farm's own storage SCP. What arrives there is verified at the
    # destination (qrfarm.delivery), not recorded by the farm.
    destination_node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id"))
    # How the destination last confirmed what it holds ("commitment", "find", "qido-rs"),
    # and how many expected instances it confirmed in all.
    verified_by: Mapped[str | None] = mapped_column(String(16))
    confirmed_count: Mapped[int | None] = mapped_column(Integer)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[JobState] = mapped_column(
        string_enum(JobState, "job_state"), default=JobState.QUEUED
    )
    external_reference: Mapped[str | None] = mapped_column(String(255), unique=True)
    # The W3C traceparent of the job's submit span: the worker's and the
    # storage SCP's spans for the job are its children (one trace per job).
    trace_parent: Mapped[str | None] = mapped_column(String(64))
    # A retrieve that may run as a C-GET or a C-MOVE, whichever the node's
    # profile says works (C-GET when it is known to support it).
    either_retrieve: Mapped[bool] = mapped_column(Boolean, default=False)
    # Where to POST the job's summary when it ends (a webhook).
    callback_url: Mapped[str | None] = mapped_column(String(2048))
    # The prefetch this job is a step of.
    prefetch_id: Mapped[int | None] = mapped_column(
        ForeignKey("prefetches.id", ondelete="SET NULL"), index=True
    )
    # The batch this job is a row of (qrfarm.workflow.batches).
    batch_id: Mapped[int | None] = mapped_column(
        ForeignKey("batches.id", ondelete="SET NULL"), index=True
    )
    # Not started before this time (UTC); and why a queued job waits, when it
    # is held (its node's bulk window, its not_before, the node's cap).
    not_before: Mapped[dt.datetime | None]
    wait_reason: Mapped[str | None] = mapped_column(String(255))
    # The retrieve by accession or patient this job is a step of.
    retrieval_id: Mapped[int | None] = mapped_column(
        ForeignKey("retrievals.id", ondelete="SET NULL"), index=True
    )
    reported_completed: Mapped[int | None] = mapped_column(Integer)
    reported_failed: Mapped[int | None] = mapped_column(Integer)
    reported_warning: Mapped[int | None] = mapped_column(Integer)
    expected_count: Mapped[int | None] = mapped_column(Integer)
    recorded_count: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    # What reconciliation found: instances failed (as the PACS listed them)
    # and expected but never recorded.
    failed_uids: Mapped[list[str]] = mapped_column(JSON, default=list)
    missing_uids: Mapped[list[str]] = mapped_column(JSON, default=list)
    # The SOP Instance UIDs the next attempt asks for (a retry of what is
    # missing); empty: the whole identifier.
    retry_uids: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Progress from the pending responses, written about once a second.
    progress_remaining: Mapped[int | None] = mapped_column(Integer)
    progress_completed: Mapped[int | None] = mapped_column(Integer)
    progress_failed: Mapped[int | None] = mapped_column(Integer)
    progress_warning: Mapped[int | None] = mapped_column(Integer)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # The lease of the worker running the job: a redelivered task finds it
    # alive and steps aside; an expired one lets the sweeper send it again.
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_token: Mapped[int] = mapped_column(Integer, default=0)
    lease_expires_at: Mapped[dt.datetime | None]
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=5)
    next_attempt_at: Mapped[dt.datetime | None]
    dispatched_at: Mapped[dt.datetime | None]
    reconcile_until: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[dt.datetime | None]
    ended_at: Mapped[dt.datetime | None]

    attempts: Mapped[list[Attempt]] = relationship(
        back_populates="job", order_by="Attempt.number", cascade="all, delete-orphan"
    )

    __table_args__ = (
        Index("ix_jobs_state_node", "state", "node_id"),
        # The moves of a node still receiving or ended within the late window:
        # looked up for each instance that names no originator.
        Index("ix_jobs_node_state_ended", "node_id", "state", "ended_at"),
        Index("ix_jobs_state_next_attempt", "state", "next_attempt_at"),
    )


class Attempt(Base):
    """One try at a job: who ran it, on which association, and how it ended."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    task_id: Mapped[str | None] = mapped_column(String(64))
    worker: Mapped[str | None] = mapped_column(String(255))
    association: Mapped[str | None] = mapped_column(String(255))
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    called_ae: Mapped[str | None] = mapped_column(String(16))
    message_id: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[dt.datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)

    job: Mapped[Job] = relationship(back_populates="attempts")
    responses: Mapped[list[DimseResponse]] = relationship(
        back_populates="attempt", order_by="DimseResponse.sequence", cascade="all, delete-orphan"
    )

    __table_args__ = (UniqueConstraint("job_id", "number"),)


class DimseResponse(Base):
    """A response of an attempt's operation, with every field the protocol layer keeps."""

    __tablename__ = "dimse_responses"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    attempt_id: Mapped[int] = mapped_column(ForeignKey("attempts.id", ondelete="CASCADE"))
    sequence: Mapped[int] = mapped_column(Integer)
    status: Mapped[int] = mapped_column(Integer)
    category: Mapped[str] = mapped_column(String(16))
    remaining: Mapped[int | None] = mapped_column(Integer)
    completed: Mapped[int | None] = mapped_column(Integer)
    failed: Mapped[int | None] = mapped_column(Integer)
    warning: Mapped[int | None] = mapped_column(Integer)
    error_comment: Mapped[str | None] = mapped_column(Text)
    offending_elements: Mapped[list[str]] = mapped_column(JSON, default=list)
    failed_sop_instance_uids: Mapped[list[str]] = mapped_column(JSON, default=list)
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    attempt: Mapped[Attempt] = relationship(back_populates="responses")

    __table_args__ = (UniqueConstraint("attempt_id", "sequence"),)


class FindResult(Base):
    """One C-FIND answer of a job, as DICOM JSON."""

    __tablename__ = "find_results"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    sequence: Mapped[int] = mapped_column(Integer)
    dataset: Mapped[dict[str, Any]] = mapped_column(JSON)

    __table_args__ = (UniqueConstraint("job_id", "sequence"),)


class ExpectedInstance(Base):
    """An instance a job should bring in, known from an IMAGE-level find before it."""

    __tablename__ = "expected_instances"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    study_instance_uid: Mapped[str | None] = mapped_column(String(64))
    series_instance_uid: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (Index("ix_expected_instances_sop", "sop_instance_uid"),)


class MoveMessageId(Base):
    """A C-MOVE Message ID handed out to one attempt, per calling AE title.

    The unique key makes an ID unique per calling AE across the farm while the
    move runs and for a while after (``released_at``), so that the storage SCP
    can find the move a C-STORE names by its Move Originator fields.
    """

    __tablename__ = "move_message_ids"

    calling_ae: Mapped[str] = mapped_column(String(16), primary_key=True)
    message_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    attempt_id: Mapped[int] = mapped_column(ForeignKey("attempts.id", ondelete="CASCADE"))
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    allocated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    released_at: Mapped[dt.datetime | None]
