"""DICOMweb nodes

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 10:00:00.000000

A node can be a DICOMweb service instead of, or beside, a DIMSE peer: its
base URL, its auth (none, bearer or basic; a user name and the path of the
file holding the secret, never the secret), and which transport its jobs use
(``retrieve_transport``) and the farm sends to it by (``delivery_transport``),
both "dimse" for the nodes already there.

Columns are added natively, not in a batch: a batch copies the table, and
SQLite refuses to drop the old copy while jobs refer to it (as in 0007).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (
    "dicomweb_url",
    "dicomweb_auth",
    "dicomweb_username",
    "dicomweb_secret_file",
    "retrieve_transport",
    "delivery_transport",
)


def upgrade() -> None:
    op.add_column("nodes", sa.Column("dicomweb_url", sa.String(2048), nullable=True))
    op.add_column(
        "nodes", sa.Column("dicomweb_auth", sa.String(8), nullable=False, server_default="none")
    )
    op.add_column("nodes", sa.Column("dicomweb_username", sa.String(255), nullable=True))
    op.add_column("nodes", sa.Column("dicomweb_secret_file", sa.String(1024), nullable=True))
    op.add_column(
        "nodes",
        sa.Column("retrieve_transport", sa.String(8), nullable=False, server_default="dimse"),
    )
    op.add_column(
        "nodes",
        sa.Column("delivery_transport", sa.String(8), nullable=False, server_default="dimse"),
    )


def downgrade() -> None:
    for column in reversed(_COLUMNS):
        op.drop_column("nodes", column)
