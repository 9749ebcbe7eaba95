"""initial schema: posts, predictions, explanations, signals, replay runs

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 07:04:58.892404
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
import monitor.storage.tables

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('posts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('source_id', sa.String(length=128), nullable=False),
    sa.Column('author', sa.String(length=64), nullable=True, comment='keyed hash of the author, never the name'),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('lang', sa.String(length=16), nullable=True),
    sa.Column('geo', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('created_at', monitor.storage.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('ingested_at', monitor.storage.tables.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_posts')),
    sa.UniqueConstraint('source', 'source_id', name=op.f('uq_posts_source'))
    )
    with op.batch_alter_table('posts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_posts_created_at'), ['created_at'], unique=False)

    op.create_table('replay_runs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('topic', sa.String(length=249), nullable=False),
    sa.Column('from_ts', monitor.storage.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('to_ts', monitor.storage.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('model_path', sa.Text(), nullable=True),
    sa.Column('model_version', sa.String(length=128), nullable=True),
    sa.Column('policy', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('started_at', monitor.storage.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', monitor.storage.tables.UTCDateTime(timezone=True), nullable=True),
    sa.Column('report', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.CheckConstraint("status IN ('running', 'done', 'failed')", name=op.f('ck_replay_runs_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_replay_runs')),
    sa.UniqueConstraint('name', name=op.f('uq_replay_runs_name'))
    )
    op.create_table('explanations',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('post_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('task', sa.String(length=64), nullable=False),
    sa.Column('model_version', sa.String(length=128), nullable=False, comment='classifier version whose label was checked'),
    sa.Column('run', sa.String(length=128), nullable=False),
    sa.Column('llm_model', sa.String(length=256), nullable=False),
    sa.Column('prompt_version', sa.String(length=64), nullable=False),
    sa.Column('predicted_label', sa.String(length=64), nullable=False),
    sa.Column('verdict', sa.String(length=16), nullable=False),
    sa.Column('final_label', sa.String(length=64), nullable=False),
    sa.Column('rationale', sa.Text(), nullable=True),
    sa.Column('evidence', sa.Text(), nullable=True, comment='a quote that occurs in the post'),
    sa.Column('reason', sa.Text(), nullable=True, comment='why the output is unverified or was not produced'),
    sa.Column('latency_s', sa.Float(), nullable=True),
    sa.Column('created_at', monitor.storage.tables.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint("verdict IN ('confirm', 'reject', 'unverified', 'over_budget')", name=op.f('ck_explanations_verdict')),
    sa.ForeignKeyConstraint(['post_id'], ['posts.id'], name=op.f('fk_explanations_post_id_posts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_explanations')),
    sa.UniqueConstraint('post_id', 'task', 'model_version', 'run', 'llm_model', 'prompt_version', name=op.f('uq_explanations_post_id'))
    )
    op.create_table('predictions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('post_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('task', sa.String(length=64), nullable=False),
    sa.Column('model_version', sa.String(length=128), nullable=False),
    sa.Column('run', sa.String(length=128), nullable=False),
    sa.Column('label', sa.String(length=64), nullable=False),
    sa.Column('probabilities', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('confidence', sa.Float(), nullable=False),
    sa.Column('escalated', sa.Boolean(), nullable=False),
    sa.Column('created_at', monitor.storage.tables.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint('confidence >= 0 AND confidence <= 1', name=op.f('ck_predictions_confidence_range')),
    sa.ForeignKeyConstraint(['post_id'], ['posts.id'], name=op.f('fk_predictions_post_id_posts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_predictions')),
    sa.UniqueConstraint('post_id', 'task', 'model_version', 'run', name=op.f('uq_predictions_post_id'))
    )
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_predictions_task_run_created_at'), ['task', 'run', 'created_at'], unique=False)

    op.create_table('signals',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('post_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('task', sa.String(length=64), nullable=False),
    sa.Column('model_version', sa.String(length=128), nullable=False),
    sa.Column('run', sa.String(length=128), nullable=False),
    sa.Column('label', sa.String(length=64), nullable=False),
    sa.Column('confidence', sa.Float(), nullable=False),
    sa.Column('decided_by', sa.String(length=16), nullable=False),
    sa.Column('post_created_at', monitor.storage.tables.UTCDateTime(timezone=True), nullable=False, comment="the post's own time, for bucketing"),
    sa.Column('flagged_at', monitor.storage.tables.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint("decided_by IN ('classifier', 'llm')", name=op.f('ck_signals_decided_by')),
    sa.CheckConstraint('confidence >= 0 AND confidence <= 1', name=op.f('ck_signals_confidence_range')),
    sa.ForeignKeyConstraint(['post_id'], ['posts.id'], name=op.f('fk_signals_post_id_posts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_signals')),
    sa.UniqueConstraint('post_id', 'task', 'model_version', 'run', name=op.f('uq_signals_post_id'))
    )
    with op.batch_alter_table('signals', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_signals_task_run_post_created_at'), ['task', 'run', 'post_created_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('signals', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_signals_task_run_post_created_at'))

    op.drop_table('signals')
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_predictions_task_run_created_at'))

    op.drop_table('predictions')
    op.drop_table('explanations')
    op.drop_table('replay_runs')
    with op.batch_alter_table('posts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_posts_created_at'))

    op.drop_table('posts')
