"""upload sessions keep the raw tus Upload-Metadata and Upload-Concat headers

Revision ID: 0004_uploads
Revises: 0001_initial
Create Date: 2026-11-26
"""
from alembic import op
import sqlalchemy as sa


revision = '0004_uploads'
down_revision = '0001_initial'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('upload_sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('metadata_header', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('concat_header', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('upload_sessions', schema=None) as batch_op:
        batch_op.drop_column('concat_header')
        batch_op.drop_column('metadata_header')
