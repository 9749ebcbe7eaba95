"""explanations: the evidence line and its occlusion scores, the LLM's label scores, unsupported terms;
the verdict 'withheld' (the LLM answered, its verdicts are not measured informative)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 10:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


OLD_VERDICTS = "verdict IN ('confirm', 'reject', 'unverified', 'over_budget')"
NEW_VERDICTS = "verdict IN ('confirm', 'reject', 'withheld', 'unverified', 'over_budget')"


def upgrade() -> None:
    with op.batch_alter_table('explanations', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_explanations_verdict'), type_='check')
        batch_op.create_check_constraint(op.f('ck_explanations_verdict'), NEW_VERDICTS)
        batch_op.add_column(sa.Column('evidence_line', sa.Integer(), nullable=True,
                                      comment="the evidence's line of the numbered post"))
        batch_op.add_column(sa.Column('evidence_scores', JSON, nullable=True,
                                      comment="per line, the drop of the predicted class's probability without it "
                                              "(occlusion)"))
        batch_op.add_column(sa.Column('label_scores', JSON, nullable=True,
                                      comment="the LLM's calibrated probability of each label; the predicted one's "
                                              "is P(confirm)"))
        batch_op.add_column(sa.Column('unsupported', JSON, nullable=True,
                                      comment='rationale terms (drug, symptom, number) the post does not contain'))


def downgrade() -> None:
    # The old schema has no 'withheld': such rows go back as 'unverified', saying why.
    with op.batch_alter_table('explanations', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_explanations_verdict'), type_='check')
    op.execute("UPDATE explanations SET verdict = 'unverified', reason = COALESCE(reason, 'verdict withheld "
               "(not measured informative); schema downgraded below 0006') WHERE verdict = 'withheld'")
    with op.batch_alter_table('explanations', schema=None) as batch_op:
        batch_op.create_check_constraint(op.f('ck_explanations_verdict'), OLD_VERDICTS)
        batch_op.drop_column('unsupported')
        batch_op.drop_column('label_scores')
        batch_op.drop_column('evidence_scores')
        batch_op.drop_column('evidence_line')
