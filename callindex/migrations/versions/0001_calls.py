"""calls and call_legs

Revision ID: 0001
Revises:
Create Date: 2026-12-06
"""
from alembic import op
import sqlalchemy as sa

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("prefix", sa.String(300), nullable=False, unique=True),
        sa.Column("location", sa.Text),
        sa.Column("started_us", sa.BigInteger, nullable=False),
        sa.Column("answered_us", sa.BigInteger),
        sa.Column("ended_us", sa.BigInteger),
        sa.Column("duration_s", sa.Float),
        sa.Column("talk_s", sa.Float),
        sa.Column("from_uri", sa.Text),
        sa.Column("to_uri", sa.Text),
        sa.Column("from_user", sa.String(1024), nullable=False),
        sa.Column("to_user", sa.String(1024), nullable=False),
        sa.Column("from_number", sa.String(1024)),
        sa.Column("to_number", sa.String(1024)),
        sa.Column("status", sa.String(64), nullable=False),
        sa.Column("final_response", sa.Integer),
        sa.Column("end_reason", sa.String(128)),
        sa.Column("recorded", sa.Boolean, nullable=False),
        sa.Column("not_recorded_reason", sa.Text),
        sa.Column("encrypted", sa.Boolean, nullable=False),
        sa.Column("signalling", sa.String(64)),
        sa.Column("has_dtmf", sa.Boolean, nullable=False),
        sa.Column("has_hold", sa.Boolean, nullable=False),
        sa.Column("codecs", sa.Text, nullable=False),
        sa.Column("sensors", sa.Text, nullable=False),
        sa.Column("sites", sa.Text, nullable=False),
        sa.Column("mos_caller", sa.Float),
        sa.Column("mos_callee", sa.Float),
        sa.Column("min_mos", sa.Float),
        sa.Column("loss_caller", sa.Float),
        sa.Column("loss_callee", sa.Float),
        sa.Column("audio_file", sa.String(64)),
        sa.Column("pcap_file", sa.String(64)),
        sa.Column("warnings", sa.Integer, nullable=False),
        sa.Column("doc_sha256", sa.String(64), nullable=False),
        sa.Column("indexed_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_calls_started", "calls", ["started_us"])
    op.create_index("ix_calls_from_number", "calls", ["from_number"])
    op.create_index("ix_calls_to_number", "calls", ["to_number"])
    op.create_index("ix_calls_from_user", "calls", ["from_user"])
    op.create_index("ix_calls_to_user", "calls", ["to_user"])
    op.create_index("ix_calls_status_started", "calls", ["status", "started_us"])
    op.create_index("ix_calls_duration", "calls", ["duration_s"])
    op.create_table(
        "call_legs",
        sa.Column("recording_id", sa.String(200), sa.ForeignKey("calls.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("call_id", sa.String(1024), primary_key=True),
    )
    op.create_index("ix_call_legs_call_id", "call_legs", ["call_id"])


def downgrade() -> None:
    op.drop_table("call_legs")
    op.drop_table("calls")
