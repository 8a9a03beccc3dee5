"""Forwarding through the farm, and the pseudonyms of research deliveries.

A forward is a job (kind ``forward``) whose node is the destination: what a
source job holds is sent on to it by C-STORE. Each instance it sends has a
row here, with the UIDs the destination got (others when pseudonymised);
what the destination confirmed is in ``delivered_instances``, as for moves.
A destination's options say whether the farm relays moves meant for it (the
source PACS cannot reach it), may transcode for it, and pseudonymises what it
gets, with the seed that keeps its pseudonyms the same across studies and
batches.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .base import Base, utcnow
from .jobs import Job


class ForwardOptions(Base):
    """How the farm delivers to one node when it forwards to it."""

    __tablename__ = "forward_options"

    node_id: Mapped[int] = mapped_column(
        ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True
    )
    # A move meant for this node goes to the farm, which forwards it on.
    via_farm: Mapped[bool] = mapped_column(Boolean, default=False)
    # Convert an instance the node refuses in its held syntax (lossless only).
    transcode: Mapped[bool] = mapped_column(Boolean, default=False)
    # De-identify what is forwarded to it (PS3.15 Basic Profile, dicognito).
    pseudonymise: Mapped[bool] = mapped_column(Boolean, default=False)
    # The secret every pseudonym for this node derives from: the same patient
    # gets the same pseudonym in every forward to it. Never shown.
    pseudonym_seed: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Forward(Base):
    """A forward job: what it sends on, and how."""

    __tablename__ = "forwards"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    source_job_id: Mapped[int] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    # Taken from the destination's options when the forward is made.
    pseudonymise: Mapped[bool] = mapped_column(Boolean, default=False)
    transcode: Mapped[bool] = mapped_column(Boolean, default=False)


class ForwardedInstance(Base):
    """One instance of a forward: sent as which UIDs, in which syntax, with what
    answer (confirmed ones are the job's delivered_instances)."""

    __tablename__ = "forwarded_instances"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The UID the destination holds it under (differs when pseudonymised).
    sent_sop_instance_uid: Mapped[str] = mapped_column(String(64))
    # The study and series it was sent in (where to look for it there).
    sent_study_instance_uid: Mapped[str | None] = mapped_column(String(64))
    sent_series_instance_uid: Mapped[str | None] = mapped_column(String(64))
    sent_transfer_syntax: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[int | None] = mapped_column(Integer)
    sent_at: Mapped[dt.datetime | None]


class FarmRelay(Base):
    """A move sent to the farm for a destination the source cannot reach: once
    it ends, the farm forwards what it holds (``forward_job_id``)."""

    __tablename__ = "farm_relays"

    move_job_id: Mapped[int] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    destination_node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    forward_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    # Added with its move, before the move has an id (submitted many at once).
    move: Mapped[Job] = relationship(foreign_keys=[move_job_id])

    __table_args__ = (Index("ix_farm_relays_pending", "forward_job_id"),)


class Pseudonym(Base):
    """One original value and its pseudonym for one destination (admin look-up only)."""

    __tablename__ = "pseudonyms"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    # PatientID, StudyInstanceUID, SeriesInstanceUID or SOPInstanceUID.
    kind: Mapped[str] = mapped_column(String(32))
    original: Mapped[str] = mapped_column(String(64))
    pseudonym: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("uq_pseudonyms_node_kind_original", "node_id", "kind", "original", unique=True),
        Index("ix_pseudonyms_pseudonym", "pseudonym"),
    )
