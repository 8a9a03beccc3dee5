"""DICOMweb nodes

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 10:00:00.000000

RESERVED: filled in by the change that needs it.
"""

from collections.abc import Sequence

# revision identifiers, used by Alembic.
revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
