"""Delivery to a destination the farm cannot watch: which instances it confirmed
holding, and the Storage Commitment requests sent to it (qrfarm.delivery)."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import JSON, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, utcnow


class NodeRole(enum.StrEnum):
    """What a node is to the farm: where studies come from, where they go, or both."""

    SOURCE = "source"
    DESTINATION = "destination"
    BOTH = "both"


class VerifiedBy(enum.StrEnum):
    """How a destination confirmed an instance."""

    COMMITMENT = "commitment"  # Storage Commitment (PS3.4 Annex J)
    FIND = "find"  # an IMAGE-level C-FIND at the destination
    QIDO = "qido-rs"  # an IMAGE-level QIDO-RS search at a DICOMweb destination


class DeliveredInstance(Base):
    """An instance a destination confirmed holding for a job (one row per job and UID)."""

    __tablename__ = "delivered_instances"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    verified_by: Mapped[str] = mapped_column(String(16))
    confirmed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class CommitmentRequest(Base):
    """A Storage Commitment request (N-ACTION) sent to a destination, and its
    report (N-EVENT-REPORT) once the destination sends it, on whichever
    association it comes."""

    __tablename__ = "commitment_requests"

    transaction_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    # The calling AE title the report may come from (the destination's).
    node_ae_title: Mapped[str] = mapped_column(String(16))
    requested_count: Mapped[int] = mapped_column(Integer)
    requested_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    reported_at: Mapped[dt.datetime | None]
    # From the report: the UIDs committed, and those failed with their reason.
    committed_uids: Mapped[list[str]] = mapped_column(JSON, default=list)
    failed_uids: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
