"""token scopes, audit trail, HL7 trigger digests

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 09:00:00.000000

API tokens carry scopes (``read``, ``submit``, ``admin``), kept as names
separated by spaces in ``api_tokens.scopes``. ``audit_events`` is the audit
trail (who, what, which job/node/patient, when, from where, outcome).
``prefetches.trigger_digest`` holds a digest of the HL7 message that started
a prefetch, so that a resend under the same control ID with other content is
refused instead of answered as the earlier order.

Upgrade: tokens issued before this revision get ``read submit``: everything
a workflow engine does (submit and follow jobs and prefetches, read results)
keeps working, but no existing token can change nodes or rules any more,
since before this revision every token could, and that was the hole. An
operator whose integration manages nodes or rules through the API grants it
back explicitly: ``qrfarm token scope NAME --scope read --scope submit
--scope admin`` (``qrfarm token list`` shows each token's scopes). New tokens
get exactly the scopes given to ``qrfarm token create NAME --scope ...``.
Downgrade drops the scopes (every token can do everything again), the audit
trail and the digests.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EXISTING_TOKENS_SCOPES = "read submit"


def upgrade() -> None:
    op.add_column(
        "api_tokens",
        sa.Column(
            "scopes", sa.String(length=64), nullable=False, server_default=EXISTING_TOKENS_SCOPES
        ),
    )
    # The default was for the rows already there; a new token names its scopes.
    # (api_tokens is referred to by nothing: SQLite's batch copy is safe here.)
    with op.batch_alter_table("api_tokens") as batch_op:
        batch_op.alter_column("scopes", server_default=None)
    op.add_column("prefetches", sa.Column("trigger_digest", sa.String(length=64), nullable=True))
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("action_code", sa.String(length=1), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("actor_kind", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("source", sa.String(length=255), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("node", sa.String(length=64), nullable=True),
        sa.Column("patient_key", sa.String(length=64), nullable=True),
        sa.Column("study_uid", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index("ix_audit_events_at", "audit_events", ["at"], unique=False)
    op.create_index("ix_audit_events_job", "audit_events", ["job_id"], unique=False)
    op.create_index("ix_audit_events_patient", "audit_events", ["patient_key"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_audit_events_patient", table_name="audit_events")
    op.drop_index("ix_audit_events_job", table_name="audit_events")
    op.drop_index("ix_audit_events_at", table_name="audit_events")
    op.drop_table("audit_events")
    op.drop_column("prefetches", "trigger_digest")
    with op.batch_alter_table("api_tokens") as batch_op:
        batch_op.drop_column("scopes")
