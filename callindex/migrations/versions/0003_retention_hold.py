"""retention and legal hold on calls

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""
from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("retain_until_us", sa.BigInteger))
        batch.add_column(sa.Column("held", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.create_index("ix_calls_retain_until", ["retain_until_us"])


def downgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.drop_index("ix_calls_retain_until")
        batch.drop_column("held")
        batch.drop_column("retain_until_us")
