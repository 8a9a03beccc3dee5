"""Batches: a list of retrieves submitted at once, one child job per good row."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, utcnow


class Batch(Base):
    """The parent of a batch's jobs; its progress is read from them."""

    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Who submitted it (a token's name, a login name) and how (csv, json).
    submitted_by: Mapped[str | None] = mapped_column(String(255))
    source_format: Mapped[str] = mapped_column(String(8))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    row_count: Mapped[int] = mapped_column(Integer, default=0)
    error_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class BatchRow(Base):
    """One row as it was given, and its outcome: a child job, or the column it
    was refused for and why."""

    __tablename__ = "batch_rows"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    # 1 for the first row of data (a CSV's header is not counted).
    row_number: Mapped[int] = mapped_column(Integer)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    accession: Mapped[str | None] = mapped_column(String(64))
    study_uid: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str | None] = mapped_column(String(64))
    destination: Mapped[str | None] = mapped_column(String(64))
    date_from: Mapped[str | None] = mapped_column(String(8))
    date_to: Mapped[str | None] = mapped_column(String(8))
    # Its child: a move job (a row by study UID), or a retrieval (by
    # accession or patient: a find, then a move per study found).
    job_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), index=True
    )
    retrieval_id: Mapped[int | None] = mapped_column(
        ForeignKey("retrievals.id", ondelete="SET NULL"), index=True
    )
    error_column: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (UniqueConstraint("batch_id", "row_number"),)
