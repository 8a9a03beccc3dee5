"""Retrieves by what people have: an accession, a patient and dates, a study UID."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, string_enum, utcnow


class RetrievalState(enum.StrEnum):
    SEARCHING = "searching"  # its find job runs
    MOVING = "moving"  # one move job per study found
    COMPLETED = "completed"
    PARTIAL = "partial"
    FAILED = "failed"  # no match, an ambiguous match, or every move failed
    CANCELLED = "cancelled"


RETRIEVAL_ENDED = frozenset(
    {
        RetrievalState.COMPLETED,
        RetrievalState.PARTIAL,
        RetrievalState.FAILED,
        RetrievalState.CANCELLED,
    }
)


class Retrieval(Base):
    """A parent of jobs: a STUDY-level find for what was given, then a move
    per matching study (qrfarm.workflow.retrieve)."""

    __tablename__ = "retrievals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"))
    destination: Mapped[str | None] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    # What was asked: accession_number, patient_id (+ issuer), date_from,
    # date_to, study_instance_uid.
    criteria: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[RetrievalState] = mapped_column(
        string_enum(RetrievalState, "retrieval_state"), default=RetrievalState.SEARCHING
    )
    # The studies found: UID, patient ID, accession, date, and the move job.
    studies: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # For the caller (may name patient IDs, as a refused ambiguous match must);
    # never logged.
    error: Mapped[str | None] = mapped_column(Text)
    external_reference: Mapped[str | None] = mapped_column(String(255), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[dt.datetime | None]

    __table_args__ = (Index("ix_retrievals_state", "state"),)
