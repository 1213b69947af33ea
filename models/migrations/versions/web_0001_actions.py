"""The dataflow page's actions: who retried, reset or decided what, when, and the outcome
(models/web_actions.py).

Revision ID: web_0001
Revises: (none; its own branch, after the location tables)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "web_0001"
down_revision = None
branch_labels = ("web",)
depends_on = "locations_0001"


def upgrade() -> None:
    op.create_table(
        "web_action",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("who", sa.String(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("flow", sa.String(), nullable=False),
        sa.Column("workflow_id", sa.String(), nullable=False),
        sa.Column("step", sa.String(), nullable=True),
        sa.Column("decision", sa.String(), nullable=True),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("message", sa.String(), nullable=False),
    )
    op.create_index("ix_web_action_workflow_id", "web_action", ["workflow_id"])


def downgrade() -> None:
    op.drop_index("ix_web_action_workflow_id", "web_action")
    op.drop_table("web_action")
