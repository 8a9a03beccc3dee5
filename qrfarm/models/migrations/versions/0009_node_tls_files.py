"""node TLS files

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 10:00:00.000000

A node with ``tls`` is reached over TLS by every part of the farm (queued
jobs, ``node echo``, the API's echo), so the files that TLS needs are kept
with the node: ``tls_ca_file`` (the CA to trust; none: the system's trust
store), ``tls_cert_file`` and ``tls_key_file`` (the farm's own certificate,
for a PACS that asks for one). Paths on the workers' file system, as the
settings file gives them; the files themselves are not in the database.

Upgrade: the columns are empty, so a node registered with ``tls`` before
this revision trusts the system's store until its files are given again
(``qrfarm node add ... --tls --tls-ca CA.pem``, or the settings file, whose
nodes are written at every SCP start).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for column in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
        op.add_column("nodes", sa.Column(column, sa.String(1024), nullable=True))


def downgrade() -> None:
    # Natively (SQLite 3.35+ too), as 0007 does: a batch would copy the table.
    for column in ("tls_key_file", "tls_cert_file", "tls_ca_file"):
        op.drop_column("nodes", column)
