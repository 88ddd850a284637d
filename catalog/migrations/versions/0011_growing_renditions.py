"""growing renditions: a rendition is published chunk by chunk, and audio is its own rendition

`kind` tells the audio rendition (one per run, shared by every video variant) from the video
rungs; `available_seconds` is how much of a rendition is published while it grows (status
GROWING), the whole duration once it is READY.

Revision ID: 0011_growing_renditions
Revises: 0010_captions
Create Date: 2026-12-05
"""
from alembic import op
import sqlalchemy as sa


revision = '0011_growing_renditions'
down_revision = '0010_captions'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('renditions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=8), nullable=False, server_default='video'))
        batch_op.add_column(sa.Column('available_seconds', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('renditions', schema=None) as batch_op:
        batch_op.drop_column('available_seconds')
        batch_op.drop_column('kind')
