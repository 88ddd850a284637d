"""captions and chapters: a table of subtitle tracks per video, chapters on the video

Captions and chapters belong to the video, not to a transcode run, so an upload shows without
re-transcoding and survives a reprocess.

Revision ID: 0010_captions
Revises: 0008_upload_host
Create Date: 2026-12-05
"""
from alembic import op
import sqlalchemy as sa


revision = '0010_captions'
down_revision = '0008_upload_host'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'captions',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('video_id', sa.String(length=32), nullable=False),
        sa.Column('language', sa.String(length=35), nullable=False),
        sa.Column('label', sa.String(length=100), nullable=False),
        sa.Column('source', sa.Enum('UPLOAD', 'SOURCE', name='captionsource', native_enum=False, length=16),
                  nullable=False),
        sa.Column('source_stream', sa.Integer(), nullable=True),
        sa.Column('is_default', sa.Boolean(), nullable=False),
        sa.Column('cue_count', sa.Integer(), nullable=False),
        sa.Column('vtt_url', sa.Text(), nullable=False),
        sa.Column('playlist_url', sa.Text(), nullable=True),
        sa.Column('timing_pts', sa.BigInteger(), nullable=True),
        sa.Column('report', sa.JSON(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['video_id'], ['videos.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('captions', schema=None) as batch_op:
        batch_op.create_index('ix_captions_video_id', ['video_id'], unique=False)
    with op.batch_alter_table('videos', schema=None) as batch_op:
        batch_op.add_column(sa.Column('chapters', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('chapters_url', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('videos', schema=None) as batch_op:
        batch_op.drop_column('chapters_url')
        batch_op.drop_column('chapters')
    with op.batch_alter_table('captions', schema=None) as batch_op:
        batch_op.drop_index('ix_captions_video_id')
    op.drop_table('captions')
