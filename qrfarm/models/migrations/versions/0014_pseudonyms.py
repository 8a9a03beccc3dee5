"""forwarding through the farm and pseudonymised delivery

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 10:00:00.000000

``forward_options``: per destination node, whether moves meant for it are
relayed through the farm (``via_farm``), whether an instance it refuses in
its held transfer syntax may be converted (``transcode``), and whether what
is forwarded to it is pseudonymised, with the seed its pseudonyms derive
from. ``forwards``: a forward job and the job whose instances it sends.
``forwarded_instances``: each instance a forward sent, as which UIDs, in which
syntax, with what answer (what the destination confirmed goes in
``delivered_instances``, as for a move to another node). ``farm_relays``: a move
sent to the farm in place of a destination, and the forward made once it
ended. ``pseudonyms``: original value and pseudonym, per destination (patient
ID, study and series UIDs), for an admin's look-up.

A job's kind is stored as a plain string (no CHECK constraint), so the new
kind ``forward`` needs no change to ``jobs``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "forward_options",
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("via_farm", sa.Boolean(), nullable=False),
        sa.Column("transcode", sa.Boolean(), nullable=False),
        sa.Column("pseudonymise", sa.Boolean(), nullable=False),
        sa.Column("pseudonym_seed", sa.String(64), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["node_id"],
            ["nodes.id"],
            name="fk_forward_options_node_id_nodes",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("node_id", name="pk_forward_options"),
    )
    op.create_table(
        "forwards",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("source_job_id", sa.Integer(), nullable=False),
        sa.Column("pseudonymise", sa.Boolean(), nullable=False),
        sa.Column("transcode", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_forwards_job_id_jobs", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["source_job_id"],
            ["jobs.id"],
            name="fk_forwards_source_job_id_jobs",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", name="pk_forwards"),
    )
    op.create_index("ix_forwards_source_job_id", "forwards", ["source_job_id"])
    op.create_table(
        "forwarded_instances",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("sent_sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("sent_study_instance_uid", sa.String(64), nullable=True),
        sa.Column("sent_series_instance_uid", sa.String(64), nullable=True),
        sa.Column("sent_transfer_syntax", sa.String(64), nullable=True),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name="fk_forwarded_instances_job_id_jobs",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "sop_instance_uid", name="pk_forwarded_instances"),
    )
    op.create_table(
        "farm_relays",
        sa.Column("move_job_id", sa.Integer(), nullable=False),
        sa.Column("destination_node_id", sa.Integer(), nullable=False),
        sa.Column("forward_job_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["move_job_id"],
            ["jobs.id"],
            name="fk_farm_relays_move_job_id_jobs",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["destination_node_id"],
            ["nodes.id"],
            name="fk_farm_relays_destination_node_id_nodes",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["forward_job_id"],
            ["jobs.id"],
            name="fk_farm_relays_forward_job_id_jobs",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("move_job_id", name="pk_farm_relays"),
    )
    op.create_index("ix_farm_relays_pending", "farm_relays", ["forward_job_id"])
    op.create_table(
        "pseudonyms",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("original", sa.String(64), nullable=False),
        sa.Column("pseudonym", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name="fk_pseudonyms_node_id_nodes", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_pseudonyms"),
    )
    op.create_index(
        "uq_pseudonyms_node_kind_original",
        "pseudonyms",
        ["node_id", "kind", "original"],
        unique=True,
    )
    op.create_index("ix_pseudonyms_pseudonym", "pseudonyms", ["pseudonym"])


def downgrade() -> None:
    op.drop_index("ix_pseudonyms_pseudonym", table_name="pseudonyms")
    op.drop_index("uq_pseudonyms_node_kind_original", table_name="pseudonyms")
    op.drop_table("pseudonyms")
    op.drop_index("ix_farm_relays_pending", table_name="farm_relays")
    op.drop_table("farm_relays")
    op.drop_table("forwarded_instances")
    op.drop_index("ix_forwards_source_job_id", table_name="forwards")
    op.drop_table("forwards")
    op.drop_table("forward_options")
