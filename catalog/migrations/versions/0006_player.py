"""playback events: one row per (session, seq)

The player may send a batch twice (a beacon on page hide racing a keepalive fetch, a retry
after a timeout); the unique index lets the server drop the copy instead of counting it twice.

Revision ID: 0006_player
Revises: 0004_uploads
Create Date: 2026-11-25
"""
from alembic import op

revision = '0006_player'
down_revision = '0004_uploads'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('playback_events', schema=None) as batch_op:
        batch_op.create_index('ux_playback_session_seq', ['session_id', 'seq'], unique=True)


def downgrade() -> None:
    with op.batch_alter_table('playback_events', schema=None) as batch_op:
        batch_op.drop_index('ux_playback_session_seq')
