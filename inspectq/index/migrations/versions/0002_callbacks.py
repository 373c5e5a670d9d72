"""Job callbacks: tenants' subscriptions and the durable delivery outbox.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    stamp = sa.DateTime(timezone=True)
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("line", sa.Text(), nullable=True),
        sa.Column("created_at", stamp, nullable=False),
    )
    op.create_index("subscriptions_tenant", "subscriptions", ["tenant"])
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("subscription_id", sa.Text(), nullable=True),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", stamp, nullable=False),
        sa.Column("next_attempt_at", stamp, nullable=False),
        sa.Column("retry_until", stamp, nullable=False),
        sa.Column("last_attempt_at", stamp, nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", stamp, nullable=True),
        sa.UniqueConstraint("job_id", "url", name="deliveries_job_url"),
    )
    op.create_index("deliveries_due", "deliveries", ["next_attempt_at"],
                    postgresql_where=sa.text("state = 'pending'"),
                    sqlite_where=sa.text("state = 'pending'"))
    op.create_index("deliveries_tenant_job", "deliveries", ["tenant", "job_id"])


def downgrade() -> None:
    op.drop_table("deliveries")
    op.drop_table("subscriptions")
