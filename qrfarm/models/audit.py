"""The audit trail: one row for each action that read patient data or changed anything.

Modelled on an IHE ATNA audit message (RFC 3881 / DICOM PS3.15 A.5): the
event (``action``, ``action_code``, ``outcome``, ``at``), the active
participant (``actor_kind``, ``actor``, ``source``: the network access point),
and the participant objects (``job_id``, ``node``, ``patient_key``,
``study_uid``). Patient keys belong here, and only here: logs never carry them.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, utcnow


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # What: a dotted name (``job.results.read``, ``node.change``, ``hl7.order``)
    # and ATNA's EventActionCode: C(reate), R(ead), U(pdate), D(elete), E(xecute).
    action: Mapped[str] = mapped_column(String(64))
    action_code: Mapped[str] = mapped_column(String(1))
    # success, refused (not allowed), failed (allowed, did not succeed).
    outcome: Mapped[str] = mapped_column(String(16))
    # Who: token (its name), os_user (user@host), hl7 (MSH-3 sending application),
    # scheduler (the scheduler's host and process).
    actor_kind: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(255))
    # From where: the client's address, the sender's address, or the host.
    source: Mapped[str | None] = mapped_column(String(255))
    job_id: Mapped[int | None] = mapped_column(Integer)
    node: Mapped[str | None] = mapped_column(String(64))
    patient_key: Mapped[str | None] = mapped_column(String(64))
    study_uid: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_audit_events_at", "at"),
        Index("ix_audit_events_job", "job_id"),
        Index("ix_audit_events_patient", "patient_key"),
    )
