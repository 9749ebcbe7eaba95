"""explain_case's budget and backlog bound, with a stand-in explainer that records whether it was asked."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

from monitor.cases import Case
from monitor.explainer.policy import ExplanationBudget
from monitor.model_card import ModelCard
from monitor.pipeline import explain_case
from monitor.records import Explanation, Post, Prediction
from monitor.runtime import TaskModel
from monitor.tasks import load_task

TASK = load_task("druglib_adverse")
CARD = ModelCard(model_version="m", task=TASK.name, labels=list(TASK.labels), signal_labels=list(TASK.signal_labels),
                 metric=TASK.metric, base_model="stand-in", max_length=64, created_at=datetime.now(UTC))


class RecordingExplainer:
    model_name = "stand-in.gguf#0"

    def __init__(self):
        self.asked = 0

    def explain(self, task, text, predicted_label):
        self.asked += 1
        return Explanation(verdict="reject", predicted_label=predicted_label, suggested_label="severe_adr",
                           evidence="nausea", rationale="r", llm_model=self.model_name, prompt_version="v")


def _case(age_s: float) -> Case:
    now = datetime.now(UTC)
    post = Post(id="1", text="nausea", created_at=now, source="t")
    prediction = Prediction(post_id="1", source="t", task=TASK.name, model_version="m", label="no_severe_adr",
                            probabilities={"no_severe_adr": 0.55, "severe_adr": 0.45}, confidence=0.55, escalated=True)
    return Case(post=post, prediction=prediction, escalation="low_confidence",
                classified_at=now - timedelta(seconds=age_s))


def test_stale_escalations_are_not_explained_and_keep_the_classifier_label():
    explainer = RecordingExplainer()
    model = TaskModel(Path("m"), TASK, CARD, mode="correct", mode_why="measured")
    decision = explain_case(_case(age_s=120), model, explainer, None, max_wait_s=60)
    assert explainer.asked == 0
    assert decision.explanation.verdict == "over_budget" and "queued" in decision.explanation.reason
    assert (decision.final_label, decision.decided_by) == ("no_severe_adr", "classifier")


def test_budget_then_correct_mode_flip():
    explainer = RecordingExplainer()
    model = TaskModel(Path("m"), TASK, CARD, mode="correct", mode_why="measured")
    budget = ExplanationBudget(1.0, burst=1, clock=lambda: 0.0)
    first = explain_case(_case(age_s=1), model, explainer, budget, max_wait_s=60)
    second = explain_case(_case(age_s=1), model, explainer, budget, max_wait_s=60)
    assert explainer.asked == 1
    assert (first.final_label, first.decided_by, first.is_signal) == ("severe_adr", "llm", True)
    assert second.explanation.verdict == "over_budget" and second.final_label == "no_severe_adr"
