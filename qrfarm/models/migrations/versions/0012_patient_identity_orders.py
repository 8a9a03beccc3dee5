"""patient identity and order control

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 10:00:00.000000

Nodes say the assigning authority of the patient IDs they hold
(``patient_id_issuer``) and whether their C-FINDs match on Issuer of Patient
ID (``issuer_matching``: yes, no, auto). A prefetch keeps every identifier of
its patient with its authority, why a node was not searched, and the order it
belongs to (``order_key``: a later XO, CA or DC of that order finds it). A
retrieve by accession, by patient and dates or by study UID is a parent
(``retrievals``) of a find job and one move job per study (``jobs.retrieval_id``).

Upgrade: nodes have no issuer (their IDs match as before, when the order
carries one identifier); prefetches keep their one patient ID.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Natively (SQLite 3.35+ too), as 0007 does: a batch would copy the table.
    op.add_column("nodes", sa.Column("patient_id_issuer", sa.String(64), nullable=True))
    op.add_column(
        "nodes",
        sa.Column("issuer_matching", sa.String(8), nullable=False, server_default="auto"),
    )
    op.add_column(
        "prefetches",
        sa.Column("patient_identifiers", sa.JSON(), nullable=False, server_default="[]"),
    )
    op.add_column(
        "prefetches", sa.Column("node_notes", sa.JSON(), nullable=False, server_default="{}")
    )
    op.add_column("prefetches", sa.Column("order_key", sa.String(255), nullable=True))
    op.create_index("ix_prefetches_order_key", "prefetches", ["order_key"], unique=False)

    op.create_table(
        "retrievals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("destination", sa.String(length=16), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("criteria", sa.JSON(), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "searching",
                "moving",
                "completed",
                "partial",
                "failed",
                "cancelled",
                name="retrieval_state",
                native_enum=False,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("studies", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("external_reference", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name=op.f("fk_retrievals_node_id_nodes")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retrievals")),
        sa.UniqueConstraint("external_reference", name=op.f("uq_retrievals_external_reference")),
    )
    op.create_index("ix_retrievals_state", "retrievals", ["state"], unique=False)

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("retrieval_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_retrieval_id"), ["retrieval_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_jobs_retrieval_id_retrievals"),
            "retrievals",
            ["retrieval_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_jobs_retrieval_id_retrievals"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_jobs_retrieval_id"))
        batch_op.drop_column("retrieval_id")
    op.drop_index("ix_retrievals_state", table_name="retrievals")
    op.drop_table("retrievals")
    op.drop_index("ix_prefetches_order_key", table_name="prefetches")
    for column in ("order_key", "node_notes", "patient_identifiers"):
        op.drop_column("prefetches", column)
    op.drop_column("nodes", "issuer_matching")
    op.drop_column("nodes", "patient_id_issuer")
