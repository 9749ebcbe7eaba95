"""explanations.suggested_label

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 08:22:00.891972
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import monitor.storage.tables

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('explanations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('suggested_label', sa.String(length=64), nullable=True, comment='the label the LLM said is right'))



def downgrade() -> None:
    with op.batch_alter_table('explanations', schema=None) as batch_op:
        batch_op.drop_column('suggested_label')

