"""The records the stages pass each other over Kafka: a classified ``Case`` and its ``Decision``.

classify emits a ``Decision`` for each case it decides itself (not escalated) and a ``Case`` for each
one the explainer must look at; explain turns a ``Case`` into a ``Decision``; persist stores both.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from monitor.records import Explanation, Post, Prediction

#: An escalation's place in the explanation budget, decided where it was classified: ``admitted``
#: (already charged: the explainer must not charge it again) or ``over_budget`` (not to be explained).
Admission = Literal["admitted", "over_budget"]


class Case(BaseModel):
    """One post's prediction for one task, and why (if at all) it goes to the explainer."""

    model_config = ConfigDict(frozen=True)

    post: Post
    prediction: Prediction
    escalation: str | None = None
    #: Escalated cases: the line of the post (1-based, ``prompts.post_lines``) whose removal lowers
    #: the predicted class's probability most, and each line's drop (``monitor.attribution``).
    evidence_line: int | None = None
    evidence_scores: tuple[float, ...] | None = None
    #: Escalated cases: the budget's answer where the case was classified; None where no budget was
    #: applied there (the explain stage charges its own).
    admission: Admission | None = None
    classified_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    received_at: datetime | None = Field(None, description="when the post arrived on the posts topic")


class Decision(BaseModel):
    """The final label of a case, who decided it, and the explanation when there is one."""

    model_config = ConfigDict(frozen=True)

    case: Case
    final_label: str
    decided_by: str
    is_signal: bool
    explanation: Explanation | None = None


#: What the predictions topic carries: a ``Decision`` (decided by the classifier) or a ``Case``
#: (escalated: its decision comes from the explainer). A Decision is tried first; a Case lacks its fields.
CLASSIFIED: TypeAdapter[Decision | Case] = TypeAdapter(Decision | Case)


def decode_classified(raw: bytes) -> Decision | Case:
    """A predictions-topic value; a ``pydantic.ValidationError`` means a poison record."""
    return CLASSIFIED.validate_json(raw)
