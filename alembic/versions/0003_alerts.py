"""alerts: EARS detections over the signal series

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 09:53:15.930467
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
import monitor.storage.tables

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('alerts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('task', sa.String(length=64), nullable=False),
    sa.Column('granularity', sa.String(length=8), nullable=False),
    sa.Column('stratum', sa.String(length=320), nullable=False, comment='all, source:NAME or region:COUNTRY/REGION'),
    sa.Column('series', sa.String(length=16), nullable=False, comment='count of flagged posts or weighted by confidence'),
    sa.Column('method', sa.String(length=8), nullable=False),
    sa.Column('bucket_start', monitor.storage.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('bucket_end', monitor.storage.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('observed', sa.Float(), nullable=False),
    sa.Column('expected', sa.Float(), nullable=False, comment='baseline mean'),
    sa.Column('sd', sa.Float(), nullable=False, comment='baseline sd after the floor: score = (observed - expected) / sd'),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('threshold', sa.Float(), nullable=False),
    sa.Column('posts', sa.Integer(), nullable=False, comment='flagged posts in the bucket'),
    sa.Column('top_posts', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False, comment='highest-confidence posts, explanations'),
    sa.Column('detected_at', monitor.storage.tables.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint("granularity IN ('hour', 'day')", name=op.f('ck_alerts_granularity')),
    sa.CheckConstraint("method IN ('C1', 'C2', 'C3')", name=op.f('ck_alerts_method')),
    sa.CheckConstraint("series IN ('count', 'weighted')", name=op.f('ck_alerts_series')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alerts')),
    sa.UniqueConstraint('task', 'granularity', 'stratum', 'series', 'method', 'bucket_start', name=op.f('uq_alerts_task'))
    )
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_alerts_bucket_start'), ['bucket_start'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_alerts_bucket_start'))

    op.drop_table('alerts')
