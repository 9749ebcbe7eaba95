"""classify_batch's admission to the explanation budget: every escalation asks the budget once, post by
post with each post's tasks in turn, and only admitted escalations pay for their evidence (occlusion)."""

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from monitor.explainer.policy import ExplanationBudget, Policy
from monitor.model_card import ModelCard
from monitor.pipeline import classify_batch
from monitor.records import Post
from monitor.runtime import TaskModel
from monitor.tasks import load_task

TASK_A = load_task("druglib_adverse")
TASK_B = load_task("rmhd27_social_anxiety")


class CountingClassifier:
    """Unsure (0.55) of every post containing ``unsure``, sure (0.95) of the rest; counts the texts it is asked."""

    device = "cpu"

    def __init__(self, task):
        self.labels = tuple(task.labels)
        self.card = ModelCard(model_version=f"{task.name}-v", task=task.name, labels=list(task.labels),
                              signal_labels=list(task.signal_labels), metric=task.metric, base_model="stand-in",
                              max_length=64, created_at=datetime.now(UTC), escalation_threshold=0.6)
        self.asked: list[str] = []

    @property
    def model_version(self) -> str:
        return self.card.model_version

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        self.asked.extend(texts)
        return np.array([[0.55, 0.45] if "unsure" in t else [0.95, 0.05] for t in texts])

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        return probabilities.argmax(axis=1)

    def device_memory_bytes(self) -> int | None:
        return None


def _setup():
    classifiers = {t.name: CountingClassifier(t) for t in (TASK_A, TASK_B)}
    models = [TaskModel(Path(t.name), t, classifiers[t.name].card) for t in (TASK_A, TASK_B)]
    now = datetime.now(UTC)
    texts = ["unsure one\nsecond line", "sure", "unsure two\nanother line", "unsure three\nline"]
    posts = [Post(id=str(i), text=t, created_at=now, source="t") for i, t in enumerate(texts)]
    return classifiers, models, posts


def test_without_a_budget_every_escalation_gets_its_evidence_and_no_admission():
    classifiers, models, posts = _setup()
    cases = classify_batch(posts, models, classifiers, Policy())
    escalated = [c for c in cases if c.escalation]
    assert len(escalated) == 6
    assert all(c.admission is None and c.evidence_scores is not None for c in escalated)


def test_admission_is_fair_across_tasks_and_only_admitted_cases_are_occluded():
    classifiers, models, posts = _setup()
    budget = ExplanationBudget(1.0, burst=3, clock=lambda: 0.0)  # three explanations, then none
    cases = classify_batch(posts, models, classifiers, Policy(), budget=budget)
    by = {(c.prediction.task, c.post.id): c for c in cases}
    # post 0 takes one for each task, post 2 the last for the first task; post 3 finds none left
    assert [by[TASK_A.name, "0"].admission, by[TASK_B.name, "0"].admission] == ["admitted", "admitted"]
    assert [by[TASK_A.name, "2"].admission, by[TASK_B.name, "2"].admission] == ["admitted", "over_budget"]
    assert [by[TASK_A.name, "3"].admission, by[TASK_B.name, "3"].admission] == ["over_budget", "over_budget"]
    assert by[TASK_A.name, "1"].escalation is None and by[TASK_A.name, "1"].admission is None
    for c in cases:
        if c.admission == "admitted":
            assert c.evidence_line is not None and c.evidence_scores is not None
        else:
            assert c.evidence_line is None and c.evidence_scores is None
    assert budget.available() == 0.0
    # the predictions are the same whatever the budget; over-budget cases stay escalated
    assert all(c.prediction.escalated == (c.escalation is not None) for c in cases)
    # occlusion asked only about admitted posts' lines: task B saw post 2's variants never
    asked_b = classifiers[TASK_B.name].asked
    assert not any("another line" == t or "unsure two" == t for t in asked_b)
    assert "second line" in asked_b  # post 0's variant without its first line
