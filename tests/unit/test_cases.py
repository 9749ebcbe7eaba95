"""The predictions topic carries a Decision (decided by the classifier) or a Case (escalated)."""

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from monitor.cases import Case, Decision, decode_classified
from monitor.records import Post, Prediction


def _case(escalation: str | None) -> Case:
    post = Post(id="p1", text="my head hurts", created_at=datetime(2026, 1, 1, tzinfo=UTC), source="t")
    prediction = Prediction(post_id="p1", source="t", task="druglib_adverse", model_version="m", label="severe_adr",
                            probabilities={"severe_adr": 0.9, "no_severe_adr": 0.1}, confidence=0.9,
                            escalated=escalation is not None)
    return Case(post=post, prediction=prediction, escalation=escalation)


def test_a_decision_and_a_case_each_decode_as_themselves():
    decided = Decision(case=_case(None), final_label="severe_adr", decided_by="classifier", is_signal=True)
    escalated = _case("low_confidence")
    assert decode_classified(decided.model_dump_json().encode()) == decided
    again = decode_classified(escalated.model_dump_json().encode())
    assert isinstance(again, Case) and again == escalated


@pytest.mark.parametrize("raw", [b"", b"{}", b"not json", b'{"case": {}}', b'{"post": 1}'])
def test_anything_else_is_a_poison_record(raw):
    with pytest.raises(ValidationError):
        decode_classified(raw)
