"""The redelivery rule of ``pipeline.persist``: the first stored prediction and explanation win, and
signals are derived from what is stored, so no order or repetition of deliveries contradicts itself.

Runs on a real (SQLite) database migrated with the project's migrations.
"""

from datetime import UTC, datetime

from sqlalchemy import select

from monitor.cases import Case, Decision
from monitor.pipeline import persist
from monitor.records import Explanation, Post, Prediction
from monitor.storage.session import transaction
from monitor.storage.tables import Explanation as ExplanationRow
from monitor.storage.tables import Prediction as PredictionRow
from monitor.storage.tables import Signal

TASK = "druglib_adverse"
SIGNALS = {TASK: frozenset({"severe_adr"})}
KEY = b"k" * 32


def _case(label: str, *, escalated: bool, post_id: str = "p1") -> Case:
    post = Post(id=post_id, text="my legs hurt after the pills", created_at=datetime(2026, 1, 1, tzinfo=UTC),
                source="t")
    other = "no_severe_adr" if label == "severe_adr" else "severe_adr"
    prediction = Prediction(post_id=post_id, source="t", task=TASK, model_version="m1", label=label,
                            probabilities={label: 0.6, other: 0.4}, confidence=0.6, escalated=escalated)
    return Case(post=post, prediction=prediction, escalation="low_confidence" if escalated else None)


def _explained(case: Case, final: str, verdict: str = "reject") -> Decision:
    explanation = Explanation(verdict=verdict, predicted_label=case.prediction.label,
                              suggested_label=final if verdict == "reject" else None, rationale="r",
                              llm_model="llm.gguf", prompt_version="v1")
    return Decision(case=case, final_label=final, decided_by="llm" if final != case.prediction.label else "classifier",
                    is_signal=final in SIGNALS[TASK], explanation=explanation)


def _by_classifier(case: Case) -> Decision:
    label = case.prediction.label
    return Decision(case=case, final_label=label, decided_by="classifier", is_signal=label in SIGNALS[TASK])


def _write(factory, cases=(), decisions=()):
    with transaction(factory) as session:
        return persist(session, list(cases), list(decisions), author_key=KEY, signal_labels=SIGNALS)


def _state(factory):
    with transaction(factory) as session:
        predictions = session.execute(select(PredictionRow.label, PredictionRow.escalated)).all()
        explanations = session.execute(select(ExplanationRow.final_label, ExplanationRow.verdict)).all()
        signals = session.execute(select(Signal.label, Signal.decided_by)).all()
    return (sorted(map(tuple, predictions)), sorted(map(tuple, explanations)), sorted(map(tuple, signals)))


def test_an_escalated_prediction_gets_its_signal_from_its_explanation_only(factory):
    case = _case("no_severe_adr", escalated=True)
    assert _write(factory, cases=[case]).rows["signals"] == 0  # waiting for the explainer
    done = _write(factory, decisions=[_explained(case, "severe_adr")])
    assert done.flagged == {("t", "p1", TASK, "severe_adr")}
    assert _state(factory) == ([("no_severe_adr", True)], [("severe_adr", "reject")], [("severe_adr", "llm")])


def test_the_explanation_may_arrive_before_the_prediction(factory):
    case = _case("no_severe_adr", escalated=True)
    _write(factory, decisions=[_explained(case, "severe_adr")])
    _write(factory, cases=[case])
    assert _state(factory) == ([("no_severe_adr", True)], [("severe_adr", "reject")], [("severe_adr", "llm")])


def test_a_redelivered_explanation_with_another_verdict_changes_nothing(factory):
    case = _case("no_severe_adr", escalated=True)
    _write(factory, cases=[case], decisions=[_explained(case, "severe_adr")])
    # Redelivered after a crash, the budget ran out this time: over_budget keeps the classifier label.
    again = _write(factory, decisions=[_explained(case, "no_severe_adr", verdict="over_budget")])
    assert again.flagged == {("t", "p1", TASK, "severe_adr")}  # what is stored, not what came
    assert _state(factory) == ([("no_severe_adr", True)], [("severe_adr", "reject")], [("severe_adr", "llm")])


def test_an_explanation_for_a_prediction_stored_unescalated_is_dropped(factory):
    first = _case("severe_adr", escalated=False)
    _write(factory, decisions=[_by_classifier(first)])
    # A redelivery that escalated the same post (a different batch, a different number) contradicts it.
    second = _case("no_severe_adr", escalated=True)
    done = _write(factory, cases=[second], decisions=[_explained(second, "no_severe_adr", verdict="confirm")])
    assert done.conflicts == 1
    assert _state(factory) == ([("severe_adr", False)], [], [("severe_adr", "classifier")])


def test_a_stored_escalation_that_comes_back_unescalated_is_escalated_again(factory):
    escalated = _case("severe_adr", escalated=True)
    _write(factory, cases=[escalated])
    again = _write(factory, decisions=[_by_classifier(_case("severe_adr", escalated=False))])
    assert again.rows["signals"] == 0 and again.flagged == set()  # no signal without its explanation
    assert len(again.orphans) == 1
    orphan = again.orphans[0]
    assert orphan.escalation == "redelivered" and orphan.prediction.escalated
    assert _state(factory) == ([("severe_adr", True)], [], [])


def test_redelivering_everything_twice_in_any_order_gives_the_same_rows(factory):
    cases = [_case("severe_adr" if i % 2 else "no_severe_adr", escalated=i % 3 == 0, post_id=f"p{i}")
             for i in range(12)]
    explained = [_explained(c, "severe_adr") for c in cases if c.escalation]
    plain = [_by_classifier(c) for c in cases if not c.escalation]
    _write(factory, cases=[c for c in cases if c.escalation], decisions=plain)
    _write(factory, decisions=explained)
    first = _state(factory)
    _write(factory, decisions=list(reversed(explained)))
    _write(factory, cases=[c for c in cases if c.escalation], decisions=list(reversed(plain)))
    assert _state(factory) == first
    predictions, explanations, signals = first
    assert len(predictions) == 12 and len(explanations) == 4
    assert len(signals) == 4 + sum(1 for c in cases if not c.escalation and c.prediction.label == "severe_adr")
