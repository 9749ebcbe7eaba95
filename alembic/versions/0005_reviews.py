"""reviews: the console's users, sessions and append-only reviews; indexes for its pages

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 10:12:40.118235
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import monitor.storage.tables

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('console_users',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('password_hash', sa.String(length=256), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False, comment='viewer (reads), reviewer (also reviews), admin (also users)'),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', monitor.storage.tables.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint("role IN ('viewer', 'reviewer', 'admin')", name=op.f('ck_console_users_role')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_console_users')),
    sa.UniqueConstraint('username', name=op.f('uq_console_users_username'))
    )
    op.create_table('console_sessions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('created_at', monitor.storage.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', monitor.storage.tables.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['console_users.id'], name=op.f('fk_console_sessions_user_id_console_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_console_sessions')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_console_sessions_token_hash'))
    )
    with op.batch_alter_table('console_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_console_sessions_expires_at'), ['expires_at'], unique=False)

    op.create_table('reviews',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False, comment='label: a post\'s label; alert: event or false alarm'),
    sa.Column('task', sa.String(length=64), nullable=False),
    sa.Column('post_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('alert_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('label', sa.String(length=64), nullable=True, comment='the label the reviewer says is right'),
    sa.Column('shown_label', sa.String(length=64), nullable=True, comment="the monitor's label when it was reviewed"),
    sa.Column('decision', sa.String(length=16), nullable=True, comment='event or false_alarm'),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('reviewer', sa.String(length=64), nullable=False, comment='username; kept if the account is later disabled'),
    sa.Column('created_at', monitor.storage.tables.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint("(kind = 'label' AND post_id IS NOT NULL AND label IS NOT NULL AND alert_id IS NULL AND decision IS NULL) OR (kind = 'alert' AND alert_id IS NOT NULL AND decision IN ('event', 'false_alarm') AND post_id IS NULL AND label IS NULL)", name=op.f('ck_reviews_what')),
    sa.CheckConstraint("kind IN ('label', 'alert')", name=op.f('ck_reviews_kind')),
    sa.ForeignKeyConstraint(['alert_id'], ['alerts.id'], name=op.f('fk_reviews_alert_id_alerts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['post_id'], ['posts.id'], name=op.f('fk_reviews_post_id_posts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reviews'))
    )
    with op.batch_alter_table('reviews', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reviews_alert_id_id'), ['alert_id', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_reviews_kind_task_id'), ['kind', 'task', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_reviews_post_id_task_id'), ['post_id', 'task', 'id'], unique=False)

    # The console's pages: every task's signals newest first; an alert's chart, model health and explanation
    # rates read from covering indexes (no table rows). The series index widens 0001's, which it replaces.
    with op.batch_alter_table('signals', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_signals_run_post_created_at_id'), ['run', 'post_created_at', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_signals_task_run_post_created_at_confidence_model_version'),
                              ['task', 'run', 'post_created_at', 'confidence', 'model_version'], unique=False)
        batch_op.drop_index(batch_op.f('ix_signals_task_run_post_created_at'))
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.create_index('ix_predictions_health', ['task', 'run', 'label', 'created_at', 'model_version',
                                                        'confidence', 'escalated'], unique=False)
    with op.batch_alter_table('explanations', schema=None) as batch_op:
        batch_op.create_index('ix_explanations_health', ['task', 'run', 'created_at', 'verdict', 'predicted_label',
                                                         'final_label'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('explanations', schema=None) as batch_op:
        batch_op.drop_index('ix_explanations_health')
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.drop_index('ix_predictions_health')
    with op.batch_alter_table('signals', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_signals_task_run_post_created_at'), ['task', 'run', 'post_created_at'],
                              unique=False)
        batch_op.drop_index(batch_op.f('ix_signals_task_run_post_created_at_confidence_model_version'))
        batch_op.drop_index(batch_op.f('ix_signals_run_post_created_at_id'))

    with op.batch_alter_table('reviews', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reviews_post_id_task_id'))
        batch_op.drop_index(batch_op.f('ix_reviews_kind_task_id'))
        batch_op.drop_index(batch_op.f('ix_reviews_alert_id_id'))
    op.drop_table('reviews')

    with op.batch_alter_table('console_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_console_sessions_expires_at'))
    op.drop_table('console_sessions')
    op.drop_table('console_users')
