"""explain_case's budget and backlog bound, the classifier's evidence line, withheld verdicts and unsupported
rationales, with a stand-in explainer that records what it was asked."""

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

    def __init__(self, rationale: str = "The post reports nausea."):
        self.asked = 0
        self.rationale = rationale
        self.questions: list[dict] = []

    def explain(self, task, text, predicted_label, *, evidence_line=None, threshold=0.5):
        self.asked += 1
        self.questions.append({"evidence_line": evidence_line, "threshold": threshold})
        return Explanation(verdict="reject", predicted_label=predicted_label, suggested_label="severe_adr",
                           evidence="nausea", rationale=self.rationale, llm_model=self.model_name,
                           prompt_version="v", label_scores={"no_severe_adr": 0.2, "severe_adr": 0.8})


def _case(age_s: float, evidence_line: int | None = None) -> Case:
    now = datetime.now(UTC)
    post = Post(id="1", text="nausea", created_at=now, source="t")
    prediction = Prediction(post_id="1", source="t", task=TASK.name, model_version="m", label="no_severe_adr",
                            probabilities={"no_severe_adr": 0.55, "severe_adr": 0.45}, confidence=0.55, escalated=True)
    return Case(post=post, prediction=prediction, escalation="low_confidence", evidence_line=evidence_line,
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
    model = TaskModel(Path("m"), TASK, CARD, mode="correct", mode_why="measured", verdicts_shown=True,
                      verdict_threshold=0.4)
    budget = ExplanationBudget(1.0, burst=1, clock=lambda: 0.0)
    first = explain_case(_case(age_s=1), model, explainer, budget, max_wait_s=60)
    second = explain_case(_case(age_s=1), model, explainer, budget, max_wait_s=60)
    assert explainer.asked == 1
    assert (first.final_label, first.decided_by, first.is_signal) == ("severe_adr", "llm", True)
    assert second.explanation.verdict == "over_budget" and second.final_label == "no_severe_adr"


def test_the_explainer_gets_the_classifiers_evidence_line_and_the_measured_threshold():
    explainer = RecordingExplainer()
    model = TaskModel(Path("m"), TASK, CARD, verdicts_shown=True, verdict_threshold=0.37)
    decision = explain_case(_case(age_s=1, evidence_line=1), model, explainer, None)
    assert explainer.questions == [{"evidence_line": 1, "threshold": 0.37}]
    assert decision.explanation.verdict == "reject" and decision.explanation.confirm_score == 0.2


def test_verdicts_not_measured_informative_are_withheld_and_change_nothing():
    explainer = RecordingExplainer()
    # Even a (stale) correct grant cannot act on a verdict that is not shown.
    model = TaskModel(Path("m"), TASK, CARD, mode="correct", verdicts_shown=False, verdicts_why="not measured")
    decision = explain_case(_case(age_s=1), model, explainer, None)
    e = decision.explanation
    assert e.verdict == "withheld" and e.suggested_label is None and e.rationale == "The post reports nausea."
    assert e.label_scores is not None  # kept for analysis, never shown as a verdict
    assert (decision.final_label, decision.decided_by) == ("no_severe_adr", "classifier")


def test_a_rationale_naming_what_the_post_lacks_is_flagged_and_counted():
    from monitor import telemetry

    before = telemetry.UNSUPPORTED.labels(TASK.name)._value.get()  # noqa: SLF001
    model = TaskModel(Path("m"), TASK, CARD, verdicts_shown=True)
    grounded = explain_case(_case(age_s=1), model, RecordingExplainer(), None).explanation
    assert grounded.unsupported == ()
    invented = RecordingExplainer("Taking 40 mg of Zoloft caused nausea and dizziness.")
    flagged = explain_case(_case(age_s=1), model, invented, None).explanation
    assert set(flagged.unsupported) == {"40", "zoloft", "dizziness"}
    assert telemetry.UNSUPPORTED.labels(TASK.name)._value.get() == before + 1  # noqa: SLF001


def test_a_rationale_that_quotes_the_post_back_is_counted():
    from monitor import telemetry

    before = telemetry.RESTATED.labels(TASK.name)._value.get()  # noqa: SLF001
    model = TaskModel(Path("m"), TASK, CARD, verdicts_shown=True)
    explain_case(_case(age_s=1), model, RecordingExplainer("Nausea."), None)  # the post is "nausea"
    assert telemetry.RESTATED.labels(TASK.name)._value.get() == before + 1  # noqa: SLF001
    explain_case(_case(age_s=1), model, RecordingExplainer("The post reports nausea."), None)
    assert telemetry.RESTATED.labels(TASK.name)._value.get() == before + 1  # noqa: SLF001


def test_a_case_admitted_where_it_was_classified_is_not_charged_again():
    explainer = RecordingExplainer()
    model = TaskModel(Path("m"), TASK, CARD, verdicts_shown=True)
    spent = ExplanationBudget(1.0, burst=1, clock=lambda: 0.0)
    assert spent.try_take()  # nothing left
    admitted = _case(age_s=1).model_copy(update={"admission": "admitted"})
    decision = explain_case(admitted, model, explainer, spent, max_wait_s=60)
    assert explainer.asked == 1 and decision.explanation.verdict == "reject"


def test_a_case_found_over_budget_where_it_was_classified_is_not_asked_nor_charged():
    explainer = RecordingExplainer()
    model = TaskModel(Path("m"), TASK, CARD, mode="correct", verdicts_shown=True)
    budget = ExplanationBudget(1.0, burst=1, clock=lambda: 0.0)
    over = _case(age_s=1).model_copy(update={"admission": "over_budget"})
    decision = explain_case(over, model, explainer, budget, max_wait_s=60)
    assert explainer.asked == 0 and budget.available() == 1.0
    assert decision.explanation.verdict == "over_budget" and "budget" in decision.explanation.reason
    assert (decision.final_label, decision.decided_by) == ("no_severe_adr", "classifier")
    # a stale case is refused as stale, whatever its admission
    stale = explain_case(_case(age_s=120).model_copy(update={"admission": "admitted"}), model, explainer, budget,
                         max_wait_s=60)
    assert explainer.asked == 0 and "queued" in stale.explanation.reason
