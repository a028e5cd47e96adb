"""retention and legal hold on calls

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06

Plain ALTER TABLE ADD COLUMN (SQLite has it natively): no batch copy of the
table, which on SQLite would drop and re-create ``calls`` and so cascade into
``call_legs``.
"""
from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("calls", sa.Column("retain_until_us", sa.BigInteger))
    op.add_column("calls", sa.Column("held", sa.Boolean, nullable=False, server_default=sa.false()))
    op.create_index("ix_calls_retain_until", "calls", ["retain_until_us"])


def downgrade() -> None:
    op.drop_index("ix_calls_retain_until", table_name="calls")
    op.drop_column("calls", "held")
    op.drop_column("calls", "retain_until_us")
