"""PACS nodes known to the farm: where they are and which AE titles they store from."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, Boolean, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, utcnow


class NodeRecord(Base):
    """One PACS. ``store_ae_titles`` are the calling AE titles its C-STOREs may
    come from when they differ from its Q/R AE title (several in some sites)."""

    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    ae_title: Mapped[str] = mapped_column(String(16))
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    max_associations: Mapped[int] = mapped_column(Integer, default=4)
    store_ae_titles: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Accept this node's C-STOREs only from its own host.
    restrict_store_host: Mapped[bool] = mapped_column(Boolean, default=False)
    tls: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
