"""batches, priorities and time windows

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 10:00:00.000000

``batches`` and ``batch_rows``: a list of retrieves submitted at once, each
row as given with its outcome (its child: a move job, or a retrieval by
accession or patient; or the column it was refused for). ``jobs.batch_id``
names a job's batch; ``jobs.not_before`` holds a job until a time;
``jobs.wait_reason`` says why a queued job waits. Nodes gain
``bulk_windows`` (when bulk work may start), ``timezone`` (the windows' local
time) and ``retrieves_per_minute`` (a cap on retrieves started).

Upgrade: nodes have no windows and no cap (as before); jobs belong to no batch.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("submitted_by", sa.String(255), nullable=True),
        sa.Column("source_format", sa.String(8), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("error_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_batches"),
    )
    # Natively (SQLite 3.35+ too), as 0007 does: a batch would copy the table.
    op.add_column(
        "nodes", sa.Column("bulk_windows", sa.JSON(), nullable=False, server_default="[]")
    )
    op.add_column("nodes", sa.Column("timezone", sa.String(64), nullable=True))
    op.add_column("nodes", sa.Column("retrieves_per_minute", sa.Integer(), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("batch_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("not_before", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("wait_reason", sa.String(255), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_batch_id"), ["batch_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_jobs_batch_id_batches"),
            "batches",
            ["batch_id"],
            ["id"],
            ondelete="SET NULL",
        )
    op.create_table(
        "batch_rows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.Integer(), nullable=False),
        sa.Column("row_number", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=True),
        sa.Column("accession", sa.String(64), nullable=True),
        sa.Column("study_uid", sa.String(64), nullable=True),
        sa.Column("source", sa.String(64), nullable=True),
        sa.Column("destination", sa.String(64), nullable=True),
        sa.Column("date_from", sa.String(8), nullable=True),
        sa.Column("date_to", sa.String(8), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("retrieval_id", sa.Integer(), nullable=True),
        sa.Column("error_column", sa.String(64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name="fk_batch_rows_batch_id_batches", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_batch_rows_job_id_jobs", ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["retrieval_id"],
            ["retrievals.id"],
            name="fk_batch_rows_retrieval_id_retrievals",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_batch_rows"),
        sa.UniqueConstraint("batch_id", "row_number", name="uq_batch_rows_batch_id"),
    )
    op.create_index("ix_batch_rows_job_id", "batch_rows", ["job_id"], unique=False)
    op.create_index("ix_batch_rows_retrieval_id", "batch_rows", ["retrieval_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_batch_rows_retrieval_id", table_name="batch_rows")
    op.drop_index("ix_batch_rows_job_id", table_name="batch_rows")
    op.drop_table("batch_rows")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_jobs_batch_id_batches"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_jobs_batch_id"))
        batch_op.drop_column("wait_reason")
        batch_op.drop_column("not_before")
        batch_op.drop_column("batch_id")
    for column in ("retrieves_per_minute", "timezone", "bulk_windows"):
        op.drop_column("nodes", column)
    op.drop_table("batches")
