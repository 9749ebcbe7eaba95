"""monitor.assessment: verdicts that carry no information are found out, whatever word they repeat."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest

from monitor.assessment import Robustness, assess, decide_mode, fit_verdict_threshold, verdict_quality, verdict_rule
from monitor.assessment import grant_key, write_policy
from monitor.evaluation import auroc
from monitor.explainer.policy import Policy
from monitor.model_card import ModelCard
from monitor.records import Explanation
from monitor.tasks import load_task

TASK = load_task("druglib_adverse")  # labels: no_severe_adr, severe_adr
LABELS = tuple(TASK.labels)
CARD = ModelCard(model_version="m", task=TASK.name, labels=list(LABELS), signal_labels=list(TASK.signal_labels),
                 metric=TASK.metric, positive_label=TASK.positive_label, base_model="stand-in", max_length=64,
                 escalation_threshold=0.99, created_at=datetime.now(UTC))
#: Everything escalates (every confidence is below the threshold), nothing is capped.
EVERYTHING = Policy(mode="correct", max_share=1.0, threshold=0.99)


class TableClassifier:
    """Predicts the label the test gives each text (with confidence 0.6): the thing measured is the explainer."""

    card = CARD
    labels = LABELS
    device = "cpu"
    model_version = "m"

    def __init__(self, predicted: dict[str, str]):
        self.predicted = predicted

    def predict_proba(self, texts):
        rows = [[0.6, 0.4] if self.predicted[t] == LABELS[0] else [0.4, 0.6] for t in texts]
        return np.array(rows)

    def decide(self, probabilities):
        return np.asarray(probabilities).argmax(axis=1)

    def device_memory_bytes(self):
        return None


class Explainer:
    """A stand-in LLM: ``says(text, predicted, gold)`` gives P(confirm) (or None: a bare verdict)."""

    model_name = "stand-in.gguf#0"
    parallel = 1
    cache_hits = 0

    def __init__(self, says, gold: dict[str, str], verdict: str | None = None):
        self.says, self.gold, self.verdict = says, gold, verdict

    def warm(self, tasks):
        return 0

    def explain(self, task, text, predicted_label, *, evidence_line=None, threshold=0.5):
        other = next(label for label in task.labels if label != predicted_label)
        p = self.says(text, predicted_label, self.gold[text])
        if p is None:  # a constant word, no scores
            verdict = self.verdict
            return Explanation(verdict=verdict, predicted_label=predicted_label,
                               suggested_label=predicted_label if verdict == "confirm" else other, evidence="x",
                               rationale="because.", llm_model=self.model_name, prompt_version="v")
        scores = {predicted_label: p, other: 1 - p}
        verdict = "confirm" if p >= threshold else "reject"
        return Explanation(verdict=verdict, predicted_label=predicted_label,
                           suggested_label=predicted_label if verdict == "confirm" else other, evidence="x",
                           rationale="because.", label_scores=scores, llm_model=self.model_name,
                           prompt_version="v")


def _labelled(n: int = 40, seed: int = 3):
    """n posts, their gold labels and a prediction that is right for about 60% of them."""
    rng = np.random.default_rng(seed)
    texts = [f"post {i}" for i in range(n)]
    gold = {t: LABELS[int(rng.integers(0, 2))] for t in texts}
    predicted = {t: gold[t] if rng.random() < 0.6 else next(x for x in LABELS if x != gold[t]) for t in texts}
    return texts, gold, predicted


@pytest.mark.parametrize("word", ["confirm", "reject"])
def test_an_explainer_that_always_says_the_same_word_is_uninformative(word):
    texts, gold, predicted = _labelled()
    explainer = Explainer(lambda *_: None, gold, verdict=word)
    report = assess(TableClassifier(predicted), explainer, TASK, texts, [gold[t] for t in texts], EVERYTHING,
                    robustness=Robustness(0.0, 0.1, 10), split="validation")
    q = report.quality
    assert q.right not in (0, q.cases)  # both right and wrong labels were asked about
    assert q.auroc == 0.5 and not q.informative and "uninformative" in q.why
    # A decoded verdict has no threshold to fit: the rates are the replies' own.
    expected = 1.0 if word == "confirm" else 0.0
    assert q.threshold == 0.5 and q.confirm_rate_right == q.confirm_rate_wrong == expected
    assert report.agreement_rate == expected
    assert report.allowed_mode == "explain" and "uninformative" in report.why


def test_constant_scores_are_uninformative_too_and_informative_ones_are_not():
    texts, gold, predicted = _labelled()
    constant = Explainer(lambda *_: 0.3, gold)
    report = assess(TableClassifier(predicted), constant, TASK, texts, [gold[t] for t in texts], EVERYTHING)
    assert report.quality.auroc == 0.5 and not report.quality.informative
    # Scores that rank right labels above wrong ones (with noise) are informative, and correct mode can follow.
    rng = np.random.default_rng(5)
    noisy = Explainer(lambda t, p, g: float(np.clip((0.7 if p == g else 0.35) + rng.normal(0, 0.1), 0, 1)), gold)
    report = assess(TableClassifier(predicted), noisy, TASK, texts, [gold[t] for t in texts], EVERYTHING,
                    robustness=Robustness(0.0, 0.1, 10))
    q = report.quality
    assert q.auroc > 0.85 and q.informative
    assert q.confirm_rate_right > 0.8 and q.confirm_rate_wrong < 0.2 and q.verdict_f1 > 0.8
    assert report.metric_after >= report.metric_before and report.allowed_mode == "correct"


def test_the_test_split_uses_the_threshold_fitted_on_validation():
    texts, gold, predicted = _labelled()
    shifted = Explainer(lambda t, p, g: 0.2 if p == g else 0.1, gold)  # a prior towards reject: calibrate by threshold
    validation = assess(TableClassifier(predicted), shifted, TASK, texts, [gold[t] for t in texts], EVERYTHING)
    assert 0.1 < validation.quality.threshold <= 0.2 and validation.quality.verdict_f1 == 1.0
    test = assess(TableClassifier(predicted), shifted, TASK, texts, [gold[t] for t in texts], EVERYTHING,
                  verdict_threshold=0.5)
    assert test.quality.threshold == 0.5 and test.quality.confirm_rate_right == 0.0


def test_auroc_and_the_threshold():
    assert auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
    assert auroc([0.5, 0.5, 0.5], [True, False, True]) == 0.5
    assert auroc([0.2, 0.3], [True, True]) is None
    assert fit_verdict_threshold([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 0.5
    assert verdict_quality([0.3, 0.4], [True, True]).why.startswith("cannot be measured")


def test_uninformative_verdicts_never_get_correct_mode_and_are_withheld(tmp_path):
    q = verdict_quality([0.5] * 6, [True, False] * 3)
    mode, why = decide_mode(0.5, 0.9, 3, flips_right=9, flips_wrong=0, robustness=Robustness(0.0, 0.1, 5), quality=q)
    assert mode == "explain" and "uninformative" in why
    policy = Policy()
    assert verdict_rule(tmp_path, "llm", "p", policy)[0] is False  # not measured: withheld
    texts, gold, predicted = _labelled()
    report = assess(TableClassifier(predicted), Explainer(lambda *_: None, gold, verdict="reject"), TASK, texts,
                    [gold[t] for t in texts], EVERYTHING)
    write_policy(tmp_path, report, policy)
    shown, threshold, why = verdict_rule(tmp_path, "stand-in.gguf#0", "v", policy)
    assert not shown and "uninformative" in why
    entry = json.loads((tmp_path / "explainer_policy.json").read_text())[grant_key("stand-in.gguf#0", "v", policy)]
    assert entry["verdicts"]["informative"] is False and entry["mode"] == "explain"


def test_an_auroc_measured_on_a_handful_of_cases_is_not_taken_as_information():
    from monitor.evaluation import auroc_p_value

    # Mann-Whitney U under no association, worked by hand: A = 0.75 on 20 + 20 cases is U = 300 against
    # a mean of 200 and a standard deviation of sqrt(20 * 20 * 41 / 12) = 36.97, z = 2.705.
    assert auroc_p_value(0.75, 20, 20) == pytest.approx(0.003415, abs=2e-5)
    lucky = verdict_quality([0.9, 0.8, 0.1], [True, True, False])  # a perfect ranking of three cases
    assert lucky.auroc == 1.0 and not lucky.informative and "which chance gives" in lucky.why
    assert lucky.auroc_p is not None and lucky.auroc_p >= 0.05
    rng = np.random.default_rng(2)
    right = [True] * 40 + [False] * 40
    scores = [float(np.clip((0.65 if r else 0.45) + rng.normal(0, 0.15), 0, 1)) for r in right]
    q = verdict_quality(scores, right)
    assert q.auroc > 0.7 and q.auroc_p < 0.05 and q.informative


def test_rationales_that_quote_the_post_back_are_counted():
    """explain-eval counts the reasons that are mostly the post's own words (a reason in other words is
    not counted, however short)."""
    texts = [f"post {i}: the tablets gave me a headache every single morning" for i in range(10)]
    gold = {t: LABELS[i % 2] for i, t in enumerate(texts)}

    class Quoting(Explainer):
        def explain(self, task, text, predicted_label, *, evidence_line=None, threshold=0.5):
            own = super().explain(task, text, predicted_label, threshold=threshold)
            copied = int(text.split(":")[0].split()[1]) < 3  # posts 0-2 get their own words back
            reason = ("The tablets gave me a headache every single morning." if copied
                      else "Daily headaches are a known reaction, not a severe one.")
            return own.model_copy(update={"rationale": reason})

    report = assess(TableClassifier(gold), Quoting(lambda *_: 0.9, gold), TASK, texts, [gold[t] for t in texts],
                    EVERYTHING)
    assert report.verified == 10 and report.restated == 3
