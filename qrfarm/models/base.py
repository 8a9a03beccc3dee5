"""The declarative base every table shares, and the one clock the rows use."""

from __future__ import annotations

import datetime as dt
import enum
from typing import cast

from sqlalchemy import Enum, MetaData, Table
from sqlalchemy.orm import DeclarativeBase

# Stable constraint names, so that migrations can find them on every database.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def table(model: type[Base]) -> Table:
    """A model's table, for Core statements on hot paths (no ORM unit of work)."""
    return cast(Table, model.__table__)


def utcnow() -> dt.datetime:
    """Now, in UTC, naive: both SQLite and PostgreSQL store it the same way."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def string_enum(kind: type[enum.StrEnum], name: str) -> Enum:
    """An enum column stored as plain strings, the same on SQLite and PostgreSQL."""
    return Enum(
        kind,
        name=name,
        native_enum=False,
        length=16,
        values_callable=lambda e: [m.value for m in e],
    )
