"""orphan claims

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 06:20:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """An orphan names the move it claimed (by its originator) and why it was refused;
    orphans are found by study when a move later asks for them; a node's moves by
    state and end, for the instances that name no originator."""
    with op.batch_alter_table("orphan_instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_job_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("refusal", sa.String(length=255), nullable=True))
        batch_op.create_index("ix_orphan_instances_study", ["study_instance_uid"], unique=False)
    op.create_index(
        "ix_jobs_node_state_ended", "jobs", ["node_id", "state", "ended_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_node_state_ended", table_name="jobs")
    with op.batch_alter_table("orphan_instances", schema=None) as batch_op:
        batch_op.drop_index("ix_orphan_instances_study")
        batch_op.drop_column("refusal")
        batch_op.drop_column("claimed_job_id")
