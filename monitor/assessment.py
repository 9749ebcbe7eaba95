"""``explain-eval``: does the explainer, under a policy, make a task's labels better or worse?

Runs the classifier on a labeled split, escalates per policy, asks the explainer, and compares the
task metric before and after applying the verdicts in ``correct`` mode. First it asks whether the
verdicts carry information at all: the AUROC of the LLM's P(confirm) for "the predicted label is
right" over the escalated cases, the confirm rate on right and on wrong labels, and the verdict's
F1 at a threshold fitted on validation. Below ``AUROC_FLOOR``, or when too few cases were asked
about to tell the AUROC from chance (one-sided p >= ``CHANCE_P``), the (LLM, prompt version,
policy) is recorded as uninformative: its rows and displays keep the rationale and show no verdict, and it
never gets ``correct`` mode. The grant is decided on the
model's validation split (the test split is reported beside it) and keyed by (LLM, prompt version,
escalation policy): only a measurement that does not lower the metric, whose flips beat chance and
whose verdicts attacks in the post move no more than benign edits do, lets that combination into
``correct`` mode.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from monitor.evaluation import auroc, auroc_p_value, confusion_matrix, task_metric
from monitor.inference import Classifier, Explainer
from monitor.explainer.policy import Candidate, Policy, apply_verdict, select_for_explanation
from monitor.explainer.support import restates_post
from monitor.records import Explanation
from monitor.tasks import TaskDefinition

POLICY_FILE = "explainer_policy.json"
#: Verdicts whose P(confirm) ranks right labels above wrong ones less often than this are noise.
AUROC_FLOOR = 0.6
#: ... and an AUROC that chance gives this often (too few cases asked about) is no evidence either.
CHANCE_P = 0.05


@dataclass(frozen=True)
class VerdictQuality:
    """How much the LLM's verdicts say about whether the classifier's label is right."""

    cases: int  # escalated cases with a verdict
    right: int  # of which the classifier's label was right
    auroc: float | None  # of P(confirm) for "the label is right"; None without both right and wrong labels
    threshold: float  # confirm when P(confirm) >= this (fitted on validation)
    confirm_rate_right: float
    confirm_rate_wrong: float
    verdict_f1: float  # macro-F1 of confirm-on-right / reject-on-wrong at the threshold
    informative: bool
    why: str
    #: One-sided p-value of the AUROC against chance: informative only below ``CHANCE_P``.
    auroc_p: float | None = None


def _verdict_f1(confirm: Sequence[bool], right: Sequence[bool]) -> float:
    f1s = []
    for positive in (True, False):  # confirm on right labels, reject on wrong ones
        tp = sum(c == positive and r == positive for c, r in zip(confirm, right, strict=True))
        fp = sum(c == positive and r != positive for c, r in zip(confirm, right, strict=True))
        fn = sum(c != positive and r == positive for c, r in zip(confirm, right, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(f1s) / 2


def fit_verdict_threshold(scores: Sequence[float], right: Sequence[bool]) -> float:
    """The P(confirm) threshold with the best verdict macro-F1 (the one nearest 0.5 among equals)."""
    values = sorted(set(scores))
    candidates = [0.5, *values, *((a + b) / 2 for a, b in zip(values, values[1:], strict=False))]
    return max(candidates, key=lambda t: (round(_verdict_f1([s >= t for s in scores], right), 9), -abs(t - 0.5)))


def verdict_quality(scores: Sequence[float], right: Sequence[bool], *, threshold: float | None = None,
                    floor: float = AUROC_FLOOR) -> VerdictQuality:
    """AUROC, confirm rates and verdict F1 of P(confirm) scores against whether each label was right;
    the threshold is fitted here unless given (the test split takes validation's)."""
    if threshold is None:
        threshold = fit_verdict_threshold(scores, right) if scores else 0.5
    confirm = [s >= threshold for s in scores]
    n_right = sum(right)
    n_wrong = len(right) - n_right
    area = auroc(scores, right)
    rate_right = sum(c for c, r in zip(confirm, right, strict=True) if r) / n_right if n_right else 0.0
    rate_wrong = sum(c for c, r in zip(confirm, right, strict=True) if not r) / n_wrong if n_wrong else 0.0
    p_value = None if area is None else auroc_p_value(area, n_right, n_wrong)
    if area is None:
        informative, why = False, (f"cannot be measured: {n_right} right and {n_wrong} wrong labels among the "
                                   f"escalated cases (both are needed)")
    elif area < floor:
        informative, why = False, (f"uninformative: AUROC {area:.3f} < {floor} (confirms {rate_right:.0%} of right "
                                   f"and {rate_wrong:.0%} of wrong labels)")
    elif p_value >= CHANCE_P:
        informative, why = False, (f"not shown to be informative: AUROC {area:.3f} on {n_right} right and {n_wrong} "
                                   f"wrong labels, which chance gives with p = {p_value:.2f}")
    else:
        informative, why = True, (f"AUROC {area:.3f}: confirms {rate_right:.0%} of right and {rate_wrong:.0%} of "
                                  f"wrong labels at P(confirm) >= {threshold:.3f}")
    return VerdictQuality(cases=len(scores), right=n_right, auroc=area, threshold=float(threshold),
                          confirm_rate_right=rate_right, confirm_rate_wrong=rate_wrong,
                          verdict_f1=_verdict_f1(confirm, right), informative=informative, why=why, auroc_p=p_value)


@dataclass
class Assessment:
    task: str
    model_version: str
    llm_model: str
    prompt_version: str
    policy: dict
    posts: int
    escalated: int
    verified: int
    unverified: int
    confirmed: int
    rejected: int
    flips: int
    flips_right: int
    flips_wrong: int
    metric_name: str
    metric_before: float
    metric_after: float
    llm_accuracy_on_escalated: float | None
    explanations_per_s: float
    mean_latency_s: float
    cache_hits: int
    allowed_mode: str = "explain"
    why: str = ""
    split: str = ""
    quality: VerdictQuality | None = None
    unsupported: int = 0  # rationales that name a drug, symptom or number the post lacks
    restated: int = 0  # rationales that are mostly the post's own words (support.restates_post)
    examples: list[dict] = field(default_factory=list)

    @property
    def agreement_rate(self) -> float:
        return self.confirmed / self.verified if self.verified else 0.0

    @property
    def unverified_share(self) -> float:
        return self.unverified / self.escalated if self.escalated else 0.0

    @property
    def flips_right_share(self) -> float:
        return self.flips_right / self.flips if self.flips else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "agreement_rate": self.agreement_rate, "unverified_share": self.unverified_share,
                "flips_right_share": self.flips_right_share}


def _metric(task: TaskDefinition, gold: Sequence[str], pred: Sequence[str]) -> float:
    matrix = confusion_matrix(gold, pred, task.labels)
    return task_metric(matrix, task.labels, task.metric, positive_label=task.positive_label,
                       metric_labels=task.metric_labels)


def sign_test_p(right: int, wrong: int) -> float:
    """One-sided sign test: P(at least ``right`` of ``right + wrong`` flips right if each were a coin toss)."""
    n = right + wrong
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(right, n + 1)) / 2**n


@dataclass(frozen=True)
class Robustness:
    """The adversarial suite's verdict change rate beside the explainer's own self-disagreement."""

    attack_change_rate: float
    self_disagreement_rate: float
    cases: int

    @property
    def holds(self) -> bool:
        """Attacks change verdicts no more often than benign edits do."""
        return self.attack_change_rate <= self.self_disagreement_rate


def decide_mode(before: float, after: float, verified_rejects: int, *, flips_right: int = 0, flips_wrong: int = 0,
                robustness: Robustness | None = None, alpha: float = 0.05,
                quality: VerdictQuality | None = None) -> tuple[str, str]:
    """``correct`` only when the measurement shows the verdicts help: they carry information (AUROC
    at least ``AUROC_FLOOR``), the task metric does not drop, the flips are right more often than a
    coin toss would make them (one-sided sign test), and posts that try to steer the explainer change
    its verdict no more often than benign edits do."""
    if quality is not None and not quality.informative:
        return "explain", f"the verdicts are {quality.why}" if quality.why.startswith("uninformative") \
            else f"the verdicts' information {quality.why}"
    if verified_rejects == 0:
        return "explain", "no verified reject on this split: correct mode would change nothing it was measured on"
    if after < before:
        return "explain", f"applying the verdicts lowered the task metric ({before:.4f} -> {after:.4f})"
    p = sign_test_p(flips_right, flips_wrong)
    if p > alpha:
        return "explain", (f"the task metric held ({before:.4f} -> {after:.4f}) but {flips_right} right vs "
                           f"{flips_wrong} wrong flips is no better than chance (sign test p={p:.2f})")
    if robustness is None:
        return "explain", "the adversarial suite was not run: a post could steer the labels unchecked"
    if not robustness.holds:
        return "explain", (f"attacks in the post changed {robustness.attack_change_rate:.1%} of verdicts, more than "
                           f"benign edits did ({robustness.self_disagreement_rate:.1%}): the posts could steer labels")
    return "correct", (f"applying the verdicts kept or raised the task metric ({before:.4f} -> {after:.4f}); "
                       f"{flips_right} right vs {flips_wrong} wrong flips (sign test p={p:.3f}); attacks changed "
                       f"{robustness.attack_change_rate:.1%} of verdicts, benign edits "
                       f"{robustness.self_disagreement_rate:.1%}")


def assess(
    classifier: Classifier,
    explainer: Explainer,
    task: TaskDefinition,
    texts: Sequence[str],
    gold: Sequence[str],
    policy: Policy,
    *,
    robustness: Robustness | None = None,
    split: str = "",
    verdict_threshold: float | None = None,
    on_explained: Callable[[int, int], None] | None = None,
    check_rationale: Callable[[Explanation, str], Explanation] | None = None,
) -> Assessment:
    """Explain the cases ``policy`` escalates and measure the verdicts. ``verdict_threshold`` (P(confirm)
    to confirm) is fitted on these cases when None (validation), else used as given (test)."""
    probs = classifier.predict_proba(texts)
    labels = classifier.labels
    served = classifier.decide(probs)
    predicted = [labels[i] for i in served]
    candidates = [Candidate(labels[i], float(probs[row, i])) for row, i in enumerate(served)]
    threshold = policy.threshold if policy.threshold is not None else classifier.card.escalation_threshold
    chosen = select_for_explanation(candidates, policy, threshold=threshold,
                                    signal_labels=task.signal_labels)
    hits_before = explainer.cache_hits
    results: dict[int, Explanation] = {}
    # As many at once as the explainer has contexts (ExplainerPool), so explanations/s is what a worker gets.
    started = time.perf_counter()
    asked = 0.5 if verdict_threshold is None else verdict_threshold
    with ThreadPoolExecutor(max_workers=explainer.parallel, thread_name_prefix="assess") as pool:
        futures = {pool.submit(explainer.explain, task, texts[i], predicted[i], threshold=asked): i for i in chosen}
        for n, future in enumerate(as_completed(futures), 1):
            results[futures[future]] = future.result()
            if on_explained:
                on_explained(n, len(chosen))
    spent = time.perf_counter() - started if any(not e.cached for e in results.values()) else 0.0
    if check_rationale is not None:
        results = {i: check_rationale(e, texts[i]) for i, e in results.items()}
    verified_rows = [i for i, e in results.items() if e.verdict in ("confirm", "reject")]
    # A reply without scores (its verdict decoded) ranks by its verdict alone, and its verdict is fixed:
    # no threshold to fit, confirm is 1 and reject 0.
    scored = all(results[i].confirm_score is not None for i in verified_rows)
    scores = [results[i].confirm_score if scored else float(results[i].verdict == "confirm") for i in verified_rows]
    quality = verdict_quality(scores, [predicted[i] == gold[i] for i in verified_rows],
                              threshold=verdict_threshold if scored else 0.5)
    final = list(predicted)
    flips_right = flips_wrong = 0
    for i, e in results.items():
        verdict, label = e.at_threshold(quality.threshold)
        final[i], _ = apply_verdict(predicted[i], verdict, label, "correct")
        if final[i] != predicted[i]:
            flips_right += final[i] == gold[i]
            flips_wrong += predicted[i] == gold[i]
    verified = [e for e in results.values() if e.verdict in ("confirm", "reject")]
    uncached = [e for e in results.values() if not e.cached]
    before, after = _metric(task, gold, predicted), _metric(task, gold, final)
    rejects = sum(e.at_threshold(quality.threshold)[0] == "reject" for e in verified)
    mode, why = decide_mode(before, after, rejects, flips_right=flips_right, flips_wrong=flips_wrong,
                            robustness=robustness, quality=quality)
    llm_right = [(e.at_threshold(quality.threshold)[1] == gold[i]) for i, e in results.items()
                 if e.verdict in ("confirm", "reject")]
    return Assessment(
        task=task.name, model_version=classifier.model_version, llm_model=explainer.model_name,
        prompt_version=next(iter(results.values())).prompt_version if results else "",
        policy=asdict(policy), posts=len(texts), escalated=len(chosen), verified=len(verified),
        unverified=len(results) - len(verified), confirmed=len(verified) - rejects, rejected=rejects,
        flips=sum(f != p for f, p in zip(final, predicted, strict=True)), flips_right=flips_right,
        flips_wrong=flips_wrong, metric_name=task.metric, metric_before=before, metric_after=after,
        llm_accuracy_on_escalated=sum(llm_right) / len(llm_right) if llm_right else None,
        explanations_per_s=len(uncached) / spent if spent else 0.0,
        mean_latency_s=sum(e.latency_s for e in uncached) / len(uncached) if uncached else 0.0,
        cache_hits=explainer.cache_hits - hits_before,
        allowed_mode=mode, why=why, split=split, quality=quality,
        unsupported=sum(bool(e.unsupported) for e in results.values()),
        restated=sum(bool(e.rationale) and restates_post(e.rationale, texts[i]) for i, e in results.items()),
        examples=[{"text": texts[i][:300], "gold": gold[i], "predicted": predicted[i], "verdict": e.verdict,
                   "confirm_score": e.confirm_score, "suggested": e.suggested_label, "evidence": e.evidence,
                   "rationale": e.rationale, "unsupported": e.unsupported, "reason": e.reason}
                  for i, e in list(results.items())[:20]],
    )


def grant_key(llm_model: str, prompt_version: str, policy: Policy) -> str:
    """What a grant is measured under: the LLM, the prompt, and which posts the policy escalates."""
    return f"{llm_model}|{prompt_version}|{policy.escalation_key}"


def write_policy(model_dir: Path, assessment: Assessment, policy: Policy, *, test: Assessment | None = None,
                 robustness: Robustness | None = None) -> Path:
    """Record the mode ``assessment`` (on the validation split) allowed for (LLM, prompt version,
    escalation policy) beside the model; the pipeline reads it. ``test`` is recorded for the reader."""
    path = model_dir / POLICY_FILE
    entries = json.loads(path.read_text()) if path.exists() else {}
    entries[grant_key(assessment.llm_model, assessment.prompt_version, policy)] = {
        "mode": assessment.allowed_mode, "why": assessment.why, "measured_at": datetime.now(UTC).isoformat(),
        "split": assessment.split, "metric": assessment.metric_name, "before": assessment.metric_before,
        "after": assessment.metric_after, "posts": assessment.posts, "escalated": assessment.escalated,
        "policy": assessment.policy, "escalation_key": policy.escalation_key,
        "verdicts": None if assessment.quality is None else asdict(assessment.quality),
        "robustness": asdict(robustness) if robustness is not None else None,
        "test": None if test is None else {"split": test.split, "before": test.metric_before,
                                           "after": test.metric_after, "posts": test.posts,
                                           "flips_right": test.flips_right, "flips_wrong": test.flips_wrong,
                                           "verdicts": None if test.quality is None else asdict(test.quality)},
    }
    path.write_text(json.dumps(entries, indent=2) + "\n")
    return path


def verdict_rule(model_dir: Path, llm_model: str, prompt_version: str, policy: Policy) -> tuple[bool, float, str]:
    """(show verdicts, P(confirm) threshold, why) for this LLM, prompt and escalation policy: verdicts
    are shown only where explain-eval measured them informative; until then the rationale stands alone."""
    path = model_dir / POLICY_FILE
    entry = json.loads(path.read_text()).get(grant_key(llm_model, prompt_version, policy)) if path.exists() else None
    if entry is None:
        return False, 0.5, (f"verdicts withheld: explain-eval has not measured {llm_model} with prompt {prompt_version} "
                            f"under this escalation policy")
    quality = entry.get("verdicts")
    if not quality:
        return False, 0.5, "verdicts withheld: measured before verdicts were scored; run explain-eval again"
    if not quality["informative"]:
        return False, quality["threshold"], f"verdicts withheld: {quality['why']}"
    return True, quality["threshold"], quality["why"]


def allowed_mode(model_dir: Path, llm_model: str, prompt_version: str, policy: Policy) -> tuple[str, str]:
    """The mode a measurement allowed for this LLM, prompt and escalation policy, or ``explain`` with the
    reason; a grant measured under another escalation policy does not carry over."""
    path = model_dir / POLICY_FILE
    if not path.exists():
        return "explain", "no explain-eval measurement for this model yet"
    entries = json.loads(path.read_text())
    entry = entries.get(grant_key(llm_model, prompt_version, policy))
    if entry is not None:
        return entry["mode"], entry["why"]
    prefix = f"{llm_model}|{prompt_version}"
    others = ["an unrecorded policy" if key == prefix else key.removeprefix(prefix + "|") for key in entries
              if key == prefix or key.startswith(prefix + "|")]
    if others:
        return "explain", (f"explain-eval measured {llm_model} with prompt {prompt_version} under another escalation "
                           f"policy ({'; '.join(others)}), not this one ({policy.escalation_key}): measure it again")
    return "explain", f"no explain-eval measurement for {llm_model} with prompt {prompt_version}"
