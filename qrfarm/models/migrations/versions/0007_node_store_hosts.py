"""node store hosts

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 09:00:00.000000

A node's C-STOREs are admitted by calling AE title and by host: ``store_hosts``
(addresses, CIDR networks, host names; empty means the node's own host) and
``any_store_host``, the explicit opt-out for a PACS behind NAT. New nodes check
hosts. ``restrict_store_host`` goes.

Upgrade: a node that restricted its host keeps that check (``any_store_host``
false, its own host). A node that did not is kept admitting from any host
(``any_store_host`` true), because before this revision the storage SCP behind
a load balancer or HAProxy saw the balancer's address, not the PACS's: turning
the check on for rows that never had it would lock those PACS out at upgrade.
Operators turn it on per node (``qrfarm node add NAME AET@host:port`` without
``--any-host``, or ``PUT /nodes/NAME`` with ``any_store_host`` false) once the
SCP sees real addresses (PROXY protocol, or a Service keeping client addresses).
The SCP names such nodes in a warning when it reads them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("nodes", sa.Column("store_hosts", sa.JSON(), nullable=False, server_default="[]"))
    op.add_column(
        "nodes",
        sa.Column("any_store_host", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    nodes = sa.table(
        "nodes",
        sa.column("restrict_store_host", sa.Boolean()),
        sa.column("any_store_host", sa.Boolean()),
    )
    op.execute(
        nodes.update()
        .where(nodes.c.restrict_store_host == sa.false())
        .values(any_store_host=sa.true())
    )
    # Natively (SQLite 3.35+ too): a batch would copy the table, and SQLite
    # refuses to drop the old copy while jobs refer to it.
    op.drop_column("nodes", "restrict_store_host")


def downgrade() -> None:
    op.add_column(
        "nodes",
        sa.Column("restrict_store_host", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    nodes = sa.table(
        "nodes",
        sa.column("restrict_store_host", sa.Boolean()),
        sa.column("any_store_host", sa.Boolean()),
    )
    op.execute(
        nodes.update()
        .where(nodes.c.any_store_host == sa.false())
        .values(restrict_store_host=sa.true())
    )
    op.drop_column("nodes", "any_store_host")
    op.drop_column("nodes", "store_hosts")
