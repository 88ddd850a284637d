"""upload sessions record the machine that holds their bytes

Upload bytes live on the disk of the web host that received them. Housekeeping runs on other
machines too (the maintenance flow runs wherever Prefect schedules it); without the owner's name
it took "no bytes here" for "bytes lost" and failed uploads that were fine on their own host.

Revision ID: 0008_upload_host
Revises: 0006_player
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa


revision = '0008_upload_host'
down_revision = '0006_player'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('upload_sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('host', sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('upload_sessions', schema=None) as batch_op:
        batch_op.drop_column('host')
