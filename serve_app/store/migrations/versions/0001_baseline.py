"""The baseline: the schema as the last release before migrations made it at start-up.

Revision ID: 0001
Revises:
Create Date: 2026-11-29

It creates only what is missing, so that it both makes an empty database and adopts one
made by an earlier release (tables there, no alembic_version), adding the task columns
and indexes an older database lacks. The tables are a frozen copy, not the live
`serve_app.store.schema.metadata`: later revisions change the schema, this one never does.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def later_task_columns() -> list[sa.Column[object]]:
    """The task columns added after the first release: nullable, so they can be added."""
    return [
        sa.Column("idempotency_key", sa.String(255)),
        sa.Column("request_fingerprint", sa.Text),
        sa.Column("files_expired_at", sa.DateTime),
        sa.Column("files_deleted_at", sa.DateTime),
        sa.Column("warnings", sa.Text),
    ]


def baseline() -> sa.MetaData:
    """The tables and indexes of the baseline schema."""
    frozen = sa.MetaData()
    sa.Table(
        "tasks",
        frozen,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(36), nullable=False, unique=True),
        sa.Column("conversion_id", sa.String(36), nullable=False, unique=True),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("stems", sa.Text, nullable=False),
        sa.Column("preprocessing", sa.Text, nullable=False),
        sa.Column("output_format", sa.String(16), nullable=False),
        sa.Column("audio_url", sa.Text),
        sa.Column("input_key", sa.Text),
        sa.Column("webhook_url", sa.Text),
        sa.Column("submitted_duration_s", sa.Float),
        sa.Column("eta_s", sa.Float, nullable=False),
        sa.Column("credit_estimate", sa.Float, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_msg", sa.Text, nullable=False),
        sa.Column("progress", sa.Float, nullable=False),
        sa.Column("results", sa.Text, nullable=False),
        sa.Column("duration_s", sa.Float),
        sa.Column("conversion_cost", sa.Float),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.Column("started_at", sa.DateTime),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("claims", sa.Integer, nullable=False),
        sa.Column("lease_owner", sa.Text),
        sa.Column("lease_until", sa.DateTime),
        *later_task_columns(),
        sa.Index("ix_tasks_claim", "status", "lease_until"),
        sa.Index("ix_tasks_finished", "status", "finished_at"),
        sa.Index("ux_tasks_idempotency_key", "owner", "idempotency_key", unique=True),
        sa.Index("ix_tasks_input_key", "input_key"),
        sa.Index("ix_tasks_files_expiry", "files_expired_at", "finished_at"),
        sa.Index("ix_tasks_files_deletion", "files_deleted_at", "files_expired_at"),
    )
    sa.Table(
        "webhook_deliveries",
        frozen,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("delivery_id", sa.String(64), nullable=False, unique=True),
        sa.Column("task_id", sa.String(36), sa.ForeignKey("tasks.task_id"), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
        sa.Index("ix_webhook_deliveries_task", "task_id"),
    )
    sa.Table(
        "webhook_attempts",
        frozen,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "delivery_id",
            sa.String(64),
            sa.ForeignKey("webhook_deliveries.delivery_id"),
            nullable=False,
        ),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("status_code", sa.Integer),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Index("ix_webhook_attempts_delivery", "delivery_id", "number"),
    )
    sa.Table(
        "rate_windows",
        frozen,
        sa.Column("owner", sa.String(255), primary_key=True),
        sa.Column("admitted", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    return frozen


def upgrade() -> None:
    bind = op.get_bind()
    frozen = baseline()
    frozen.create_all(bind, checkfirst=True)
    present = {column["name"] for column in sa.inspect(bind).get_columns("tasks")}
    for column in later_task_columns():
        if column.name not in present:
            op.add_column("tasks", column)
    for table in frozen.sorted_tables:
        for index in table.indexes:
            index.create(bind, checkfirst=True)


def downgrade() -> None:
    for table in reversed(baseline().sorted_tables):
        op.drop_table(table.name)
