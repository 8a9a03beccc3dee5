"""destinations and verification

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 10:00:00.000000

A node says what it is to the farm (``role``: source, destination or both;
every node registered before stays both, as any registered AE title could be
a move's destination). A move names its destination node
(``jobs.destination_node_id``; none: the farm's storage SCP) and says how the
destination confirmed what arrived (``verified_by``, ``confirmed_count``).
``delivered_instances`` holds each confirmed instance, ``commitment_requests``
each Storage Commitment request and its report.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Natively, as 0007 does: a batch would copy the table, and SQLite refuses
    # to drop the old copy while jobs refer to it.
    op.add_column("nodes", sa.Column("role", sa.String(16), nullable=False, server_default="both"))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("destination_node_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("verified_by", sa.String(16), nullable=True))
        batch.add_column(sa.Column("confirmed_count", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_jobs_destination_node_id_nodes", "nodes", ["destination_node_id"], ["id"]
        )
    op.create_table(
        "delivered_instances",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("verified_by", sa.String(16), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name="fk_delivered_instances_job_id_jobs",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "sop_instance_uid", name="pk_delivered_instances"),
    )
    op.create_table(
        "commitment_requests",
        sa.Column("transaction_uid", sa.String(64), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("node_ae_title", sa.String(16), nullable=False),
        sa.Column("requested_count", sa.Integer(), nullable=False),
        sa.Column("requested_at", sa.DateTime(), nullable=False),
        sa.Column("reported_at", sa.DateTime(), nullable=True),
        sa.Column("committed_uids", sa.JSON(), nullable=False),
        sa.Column("failed_uids", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_commitment_requests_job_id_jobs", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["node_id"],
            ["nodes.id"],
            name="fk_commitment_requests_node_id_nodes",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("transaction_uid", name="pk_commitment_requests"),
    )
    op.create_index(
        "ix_commitment_requests_job_id", "commitment_requests", ["job_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_commitment_requests_job_id", table_name="commitment_requests")
    op.drop_table("commitment_requests")
    op.drop_table("delivered_instances")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("fk_jobs_destination_node_id_nodes", type_="foreignkey")
        batch.drop_column("confirmed_count")
        batch.drop_column("verified_by")
        batch.drop_column("destination_node_id")
    op.drop_column("nodes", "role")
