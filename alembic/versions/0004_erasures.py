"""erasures: tombstones of deleted posts and authors; posts.author indexed for erasure by author

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 23:33:56.671539
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import monitor.storage.tables

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('erasures',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False, comment='post: one post; author: every post of an author'),
    sa.Column('target', sa.String(length=128), nullable=False, comment="the post's source id, or the author's keyed hash"),
    sa.Column('origin', sa.String(length=16), nullable=False, comment='platform (a delete event) or request (monitor privacy)'),
    sa.Column('requested_at', monitor.storage.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('erased_at', monitor.storage.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('posts_removed', sa.Integer(), nullable=False, comment='posts deleted when it was first applied'),
    sa.CheckConstraint("kind IN ('post', 'author')", name=op.f('ck_erasures_kind')),
    sa.CheckConstraint("origin IN ('platform', 'request')", name=op.f('ck_erasures_origin')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_erasures')),
    sa.UniqueConstraint('source', 'kind', 'target', name=op.f('uq_erasures_source'))
    )
    with op.batch_alter_table('posts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_posts_author'), ['author'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('posts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_posts_author'))

    op.drop_table('erasures')
