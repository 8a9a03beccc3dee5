"""Instances received: one row per job and SOP Instance UID, and orphans."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, string_enum, utcnow


class MatchedBy(enum.StrEnum):
    """How an incoming instance was tied to its job."""

    ORIGINATOR = "originator"  # Move Originator AE Title + Message ID
    DESTINATION = "destination"  # the called AE title leased to one move
    UIDS = "uids"  # study / series / SOP UIDs of a running move of that PACS
    GET = "get"  # arrived on the C-GET's own association
    WADO = "wado"  # in the answer to the job's own WADO-RS request
    LATE = "late"  # an orphan matched afterwards


class _InstanceColumns:
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    file_path: Mapped[str] = mapped_column(String(1024))
    calling_ae: Mapped[str] = mapped_column(String(16))
    called_ae: Mapped[str | None] = mapped_column(String(16))
    peer_host: Mapped[str | None] = mapped_column(String(255))
    move_originator_ae: Mapped[str | None] = mapped_column(String(16))
    move_originator_message_id: Mapped[int | None] = mapped_column(Integer)
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ReceivedInstance(_InstanceColumns, Base):
    __tablename__ = "received_instances"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    matched_by: Mapped[MatchedBy] = mapped_column(string_enum(MatchedBy, "matched_by"))
    # The same instance sent again for this job: counted, never a second row.
    repeat_count: Mapped[int] = mapped_column(Integer, default=0)
    repeat_differs: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (
        Index("uq_received_instances_job_sop", "job_id", "sop_instance_uid", unique=True),
        # What is already held of a study (prefetch skips those).
        Index("ix_received_instances_study", "study_instance_uid"),
    )


class OrphanInstance(_InstanceColumns, Base):
    """Stored and recorded, but no running job asked for it (yet)."""

    __tablename__ = "orphan_instances"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    repeat_count: Mapped[int] = mapped_column(Integer, default=0)
    repeat_differs: Mapped[bool] = mapped_column(Boolean, default=False)
    matched_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    # A move it named (by its Move Originator) but does not belong to, and why.
    # No foreign key: the claim stays on record whatever becomes of that job.
    claimed_job_id: Mapped[int | None] = mapped_column(Integer)
    refusal: Mapped[str | None] = mapped_column(String(255))

    __table_args__ = (
        Index("ix_orphan_instances_sop", "sop_instance_uid"),
        # The orphans of a study that a move later asks for (claimed by it).
        Index("ix_orphan_instances_study", "study_instance_uid"),
        Index("uq_orphan_instances_sop_calling", "sop_instance_uid", "calling_ae", unique=True),
    )
