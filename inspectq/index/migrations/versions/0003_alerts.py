"""Line health alerts: the alert history, each channel's delivery, per-line configuration.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    stamp = sa.DateTime(timezone=True)
    op.create_table(
        "alerts",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.Column("camera", sa.Text(), nullable=True),
        sa.Column("stream", sa.Text(), nullable=False),
        sa.Column("monitor_alert_id", sa.Text(), nullable=False),
        sa.Column("rate_kind", sa.Text(), nullable=False),
        sa.Column("test", sa.Text(), nullable=False),
        sa.Column("rate", sa.Double(), nullable=False),
        sa.Column("baseline", sa.Double(), nullable=False),
        sa.Column("limit_rate", sa.Double(), nullable=False),
        sa.Column("window_images", sa.Integer(), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("job_ids", json, nullable=False),
        sa.Column("opened_at", stamp, nullable=False),
        sa.Column("resolved_at", stamp, nullable=True),
        sa.Column("resolution", json, nullable=True),
        sa.Column("acknowledged_at", stamp, nullable=True),
        sa.Column("acknowledged_by", sa.Text(), nullable=True),
        sa.Column("ack_note", sa.Text(), nullable=True),
    )
    op.create_index("alerts_tenant_opened", "alerts",
                    ["tenant", sa.text("opened_at DESC"), sa.text("id DESC")])
    op.create_index("alerts_tenant_line_opened", "alerts",
                    ["tenant", "line", sa.text("opened_at DESC"), sa.text("id DESC")])
    op.create_table(
        "alert_deliveries",
        sa.Column("alert_id", sa.Text(), nullable=False),
        sa.Column("event", sa.Text(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_attempt_at", stamp, nullable=True),
        sa.Column("next_attempt_at", stamp, nullable=True),
        sa.Column("delivered_at", stamp, nullable=True),
        sa.PrimaryKeyConstraint("alert_id", "event", "channel", name="alert_deliveries_pkey"),
    )
    op.create_table(
        "line_alerting",
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.Column("config", json, nullable=False),
        sa.Column("updated_at", stamp, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "line", name="line_alerting_pkey"),
    )


def downgrade() -> None:
    op.drop_table("line_alerting")
    op.drop_table("alert_deliveries")
    op.drop_table("alerts")
