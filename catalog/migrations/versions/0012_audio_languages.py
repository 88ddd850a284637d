"""audio languages: every audio stream of a source is a rendition of the one audio group

An audio rendition row says what the master's EXT-X-MEDIA line needs: its `language` (BCP 47,
"und" when the source did not say), a `label` (the NAME a player shows), whether it is the
group's default, its `role` (main, commentary or description) and the HLS `characteristics`
(Apple's describes-video for an audio description). Video rows leave them empty.

Revision ID: 0012_audio_languages
Revises: 0011_growing_renditions
Create Date: 2026-12-07
"""
from alembic import op
import sqlalchemy as sa


revision = '0012_audio_languages'
down_revision = '0011_growing_renditions'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('renditions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('language', sa.String(length=35), nullable=True))
        batch_op.add_column(sa.Column('label', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('is_default', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('role', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('characteristics', sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('renditions', schema=None) as batch_op:
        for name in ('characteristics', 'role', 'is_default', 'label', 'language'):
            batch_op.drop_column(name)
