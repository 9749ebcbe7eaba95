"""``explain-eval``: does the explainer, under a policy, make a task's labels better or worse?

Runs the classifier on a labeled split, escalates per policy, asks the explainer, and compares the
task metric before and after applying the verdicts in ``correct`` mode. The grant is decided on the
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

from monitor.evaluation import confusion_matrix, task_metric
from monitor.inference import Classifier, Explainer
from monitor.explainer.policy import Candidate, Policy, apply_verdict, select_for_explanation
from monitor.records import Explanation
from monitor.tasks import TaskDefinition

POLICY_FILE = "explainer_policy.json"


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
                robustness: Robustness | None = None, alpha: float = 0.05) -> tuple[str, str]:
    """``correct`` only when the measurement shows the verdicts help: the task metric does not drop,
    the flips are right more often than a coin toss would make them (one-sided sign test), and posts
    that try to steer the explainer change its verdict no more often than benign edits do."""
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
    on_explained: Callable[[int, int], None] | None = None,
) -> Assessment:
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
    with ThreadPoolExecutor(max_workers=explainer.parallel, thread_name_prefix="assess") as pool:
        futures = {pool.submit(explainer.explain, task, texts[i], predicted[i]): i for i in chosen}
        for n, future in enumerate(as_completed(futures), 1):
            results[futures[future]] = future.result()
            if on_explained:
                on_explained(n, len(chosen))
    spent = time.perf_counter() - started if any(not e.cached for e in results.values()) else 0.0
    final = list(predicted)
    flips_right = flips_wrong = 0
    for i, e in results.items():
        final[i], _ = apply_verdict(predicted[i], e.verdict, e.suggested_label, "correct")
        if final[i] != predicted[i]:
            flips_right += final[i] == gold[i]
            flips_wrong += predicted[i] == gold[i]
    verified = [e for e in results.values() if e.verdict in ("confirm", "reject")]
    uncached = [e for e in results.values() if not e.cached]
    before, after = _metric(task, gold, predicted), _metric(task, gold, final)
    rejects = sum(e.verdict == "reject" for e in verified)
    mode, why = decide_mode(before, after, rejects, flips_right=flips_right, flips_wrong=flips_wrong,
                            robustness=robustness)
    llm_right = [(e.suggested_label == gold[i]) for i, e in results.items() if e.verdict in ("confirm", "reject")]
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
        allowed_mode=mode, why=why, split=split,
        examples=[{"text": texts[i][:300], "gold": gold[i], "predicted": predicted[i], "verdict": e.verdict,
                   "suggested": e.suggested_label, "evidence": e.evidence, "rationale": e.rationale,
                   "reason": e.reason} for i, e in list(results.items())[:20]],
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
        "robustness": asdict(robustness) if robustness is not None else None,
        "test": None if test is None else {"split": test.split, "before": test.metric_before,
                                           "after": test.metric_after, "posts": test.posts,
                                           "flips_right": test.flips_right, "flips_wrong": test.flips_wrong},
    }
    path.write_text(json.dumps(entries, indent=2) + "\n")
    return path


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
