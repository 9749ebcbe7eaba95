"""The one place adapters meet: classify -> escalate -> explain -> persist, for a batch of posts.

`monitor classify FILE` runs ``process_batch`` in one process; the Faust agents run the same steps
one per role (``classify_batch`` -> ``explain_case`` -> ``persist``), passing ``Case`` and
``Decision`` records (``monitor.cases``) between them over Kafka. Writes are idempotent, so
at-least-once delivery gives exactly one row per (post, task, model version, run). The classifier
and the explainer are the Protocols of ``monitor.inference``: this module never imports torch.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from monitor import telemetry
from monitor.attribution import occlusion
from monitor.cases import Admission, Case, Decision
from monitor.explainer.policy import Candidate, ExplanationBudget, Policy, apply_verdict, escalation_reason
from monitor.explainer.prompts import prompt_version
from monitor.explainer.support import check_rationale, restates_post
from monitor.inference import Classifier, Explainer
from monitor.records import Explanation, Post, Prediction
from monitor.runtime import Runtime, TaskModel
from monitor.storage import erasures, repository
from monitor.storage.session import transaction
from monitor.storage.tables import LIVE_RUN
from monitor.tasks import TaskDefinition


@dataclass
class BatchResult:
    posts: int = 0
    predictions: int = 0
    escalated: int = 0
    explained: int = 0
    over_budget: int = 0
    unverified: int = 0
    flipped: int = 0
    signals: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)

    def add(self, other: BatchResult) -> None:
        for name in ("posts", "predictions", "escalated", "explained", "over_budget", "unverified", "flipped",
                     "signals"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for table, count in other.rows.items():
            self.rows[table] = self.rows.get(table, 0) + count


class _Scored(NamedTuple):
    """One task's model on a batch, before admission and evidence."""

    model: TaskModel
    classifier: Classifier
    probs: np.ndarray
    best: np.ndarray
    candidates: list[Candidate]
    reasons: list[str | None]


def classify_batch(posts: Sequence[Post], models: Sequence[TaskModel], classifiers: Mapping[str, Classifier],
                   policy: Policy, *, received_at: Sequence[datetime | None] | None = None,
                   budget: ExplanationBudget | None = None) -> list[Case]:
    """Every model on the whole batch, task after task; the policy picks which predictions to escalate.

    With a ``budget``, each escalation is admitted here, before its evidence is computed: one that
    finds the budget spent goes on marked ``over_budget`` (the explainer will not be asked, so its
    occlusion would be wasted). Admission goes post by post, each post's tasks in turn, so no task
    takes the whole budget because it comes first. Without one, every escalation gets its evidence
    and the explain stage charges its own budget.
    """
    texts = [p.text for p in posts]
    arrived = list(received_at) if received_at is not None else [None] * len(posts)
    if posts:
        telemetry.BATCH_SIZE.observe(len(posts))
    scored: list[_Scored] = []
    for model in models:
        task = model.task.name
        classifier = classifiers[task]
        started = time.perf_counter()
        probs = classifier.predict_proba(texts)
        telemetry.INFERENCE_SECONDS.labels(task).observe(time.perf_counter() - started)
        labels = classifier.labels
        best = classifier.decide(probs)
        candidates = [Candidate(labels[i], float(probs[row, i])) for row, i in enumerate(best)]
        threshold = policy.threshold if policy.threshold is not None else classifier.card.escalation_threshold
        # The post's own prediction decides, never its batch mates: a redelivered post gets the same
        # decision whatever batch it lands in (the share of escalations is bounded by the threshold,
        # chosen on validation, and the rate of explanations by the budget).
        reasons = [escalation_reason(c, policy, threshold=threshold, signal_labels=model.task.signal_labels)
                   for c in candidates]
        scored.append(_Scored(model, classifier, probs, best, candidates, reasons))
    admission: dict[tuple[int, int], Admission] = {}
    if budget is not None:
        for row in range(len(posts)):
            for t, task_scores in enumerate(scored):
                if task_scores.reasons[row] is not None:
                    admission[t, row] = "admitted" if budget.try_take() else "over_budget"
    cases: list[Case] = []
    for t, (model, classifier, probs, best, candidates, reasons) in enumerate(scored):
        task, labels = model.task.name, classifier.labels
        # The evidence of an escalated case is chosen by the classifier that decided (occlusion, one
        # batched pass over the escalated posts' lines), so it is faithful whatever the LLM is.
        escalated = [row for row, reason in enumerate(reasons)
                     if reason is not None and admission.get((t, row)) != "over_budget"]
        attributions = dict(zip(escalated, occlusion(classifier, [texts[row] for row in escalated],
                                                     [int(best[row]) for row in escalated],
                                                     whole=probs[escalated]), strict=True))
        for row, post in enumerate(posts):
            reason = reasons[row]
            attribution = attributions.get(row)
            prediction = Prediction(
                post_id=post.id, source=post.source, task=task,
                model_version=classifier.model_version, label=candidates[row].label,
                probabilities={label: float(p) for label, p in zip(labels, probs[row], strict=True)},
                confidence=candidates[row].confidence, escalated=reason is not None,
            )
            telemetry.PREDICTIONS.labels(task, prediction.label).inc()
            if reason is not None:
                telemetry.ESCALATIONS.labels(task, reason).inc()
            cases.append(Case(post=post, prediction=prediction, escalation=reason, received_at=arrived[row],
                              admission=admission.get((t, row)),
                              evidence_line=attribution.evidence_line if attribution else None,
                              evidence_scores=attribution.scores if attribution else None))
        telemetry.record_gpu_memory(classifier.device, classifier.device_memory_bytes())
    return cases


def checked(explanation: Explanation, text: str, task: TaskDefinition) -> Explanation:
    """The explanation with the rationale's terms the post lacks (a drug, a symptom, a number) listed;
    the task's own label and title words are never counted (they name the label, not the post)."""
    if not explanation.rationale:
        return explanation
    allowed = [*task.labels, task.title]
    check = check_rationale(explanation.rationale, text, allowed=allowed)
    return explanation.model_copy(update={"unsupported": check.unsupported})


def withheld(explanation: Explanation) -> Explanation:
    """An answer whose verdicts were not measured informative: the rationale stays, the verdict goes."""
    if explanation.verdict not in ("confirm", "reject"):
        return explanation
    return explanation.model_copy(update={"verdict": "withheld", "suggested_label": None})


def ask(explainer: Explainer, model: TaskModel, text: str, predicted: str, evidence_line: int | None) -> Explanation:
    """The explainer's answer on ``predicted`` as every caller shows it: at the task's measured
    threshold, about the classifier's evidence line, its rationale checked against the post, and its
    verdict withheld unless measured informative."""
    explanation = explainer.explain(model.task, text, predicted, evidence_line=evidence_line,
                                    threshold=model.verdict_threshold)
    explanation = checked(explanation, text, model.task)
    return explanation if model.verdicts_shown else withheld(explanation)


def decide_by_classifier(case: Case, task: TaskDefinition) -> Decision:
    label = case.prediction.label
    return Decision(case=case, final_label=label, decided_by="classifier", is_signal=label in task.signal_labels)


def explain_case(case: Case, model: TaskModel, explainer: Explainer, budget: ExplanationBudget | None,
                 *, max_wait_s: float | None = None, now: datetime | None = None) -> Decision:
    """Ask the explainer (within budget) and apply its verdict as the task's mode allows.

    Over budget, or queued longer than ``max_wait_s`` (the LLM has fallen behind), the case keeps
    its classifier label and is marked ``over_budget``: a backlog never grows without bound. A case
    admitted where it was classified is not charged again; one found over budget there is not asked.
    """
    predicted = case.prediction.label
    task = model.task.name
    waited = ((now or datetime.now(UTC)) - case.classified_at).total_seconds()
    stale = max_wait_s is not None and waited > max_wait_s
    spent = case.admission == "over_budget" or (
        case.admission is None and budget is not None and not budget.try_take())
    if stale or spent:
        why = f"queued {waited:.0f} s, over the {max_wait_s:.0f} s limit" if stale else "the budget was exhausted"
        explanation = Explanation(verdict="over_budget", predicted_label=predicted,
                                  reason=f"not explained: {why}",
                                  llm_model=explainer.model_name, prompt_version=prompt_version(model.task))
        telemetry.NOT_EXPLAINED.labels(task, "backlog" if stale else "budget").inc()
    else:
        started = time.perf_counter()
        explanation = ask(explainer, model, case.post.text, predicted, case.evidence_line)
        telemetry.LLM_SECONDS.labels(task).observe(time.perf_counter() - started)
        if explanation.unsupported:
            telemetry.UNSUPPORTED.labels(task).inc()
        if explanation.rationale and restates_post(explanation.rationale, case.post.text):
            telemetry.RESTATED.labels(task).inc()
    final, decided_by = apply_verdict(predicted, explanation.verdict, explanation.suggested_label, model.mode)
    telemetry.EXPLANATIONS.labels(task, explanation.verdict).inc()
    if final != predicted:
        telemetry.FLIPS.labels(task).inc()
    return Decision(case=case, final_label=final, decided_by=decided_by, is_signal=final in model.task.signal_labels,
                    explanation=explanation)


@dataclass
class Persisted:
    """What one persist transaction did."""

    rows: dict[str, int]
    #: Redelivered results that disagreed with the stored ones and were dropped (the first stored wins).
    conflicts: int = 0
    #: Escalated predictions that are stored, unexplained, and came back unescalated: to escalate again.
    orphans: list[Case] = field(default_factory=list)
    #: (source, post id, task, label) of every signal the stored rows imply (new or not).
    flagged: set[tuple[str, str, str, str]] = field(default_factory=set)
    #: Posts not stored because an erasure (a platform delete, a request) covers them.
    erased: int = 0


def persist(session: Session, cases: Sequence[Case], decisions: Sequence[Decision], *, author_key: bytes,
            signal_labels: Mapping[str, Collection[str]], run: str = LIVE_RUN) -> Persisted:
    """Upsert the posts, predictions and explanations, then the signals the stored rows imply.

    The rule that keeps redeliveries consistent: the first stored prediction of a (post, task,
    model version, run) is authoritative, and so is the first stored explanation. An escalated
    prediction's final label is its explanation's (no signal until there is one); an unescalated
    one's is the classifier's label. An explanation for a prediction stored as unescalated is
    dropped. Signals are derived from the stored rows in the same transaction, so a ``signals`` row
    always agrees with ``predictions.escalated`` and ``explanations.final_label``, whatever was
    redelivered and in which order.
    """
    posts = {(c.post.source, c.post.id): c.post for c in cases}
    posts.update({(d.case.post.source, d.case.post.id): d.case.post for d in decisions})
    # A post deleted on its platform (or erased on request) before it got here is never stored.
    gone = erasures.erased_posts(session, list(posts.values()), author_key=author_key)
    if gone:
        cases = [c for c in cases if (c.post.source, c.post.id) not in gone]
        decisions = [d for d in decisions if (d.case.post.source, d.case.post.id) not in gone]
        posts = {k: p for k, p in posts.items() if k not in gone}
    ids = repository.upsert_posts(session, list(posts.values()), author_key=author_key)
    incoming = [*cases, *(d.case for d in decisions)]
    rows = {"posts_seen": len(ids),
            "predictions": repository.upsert_predictions(session, [c.prediction for c in incoming], ids, run=run)}

    def key(case: Case) -> repository.PredictionKey:
        return ids[(case.post.source, case.post.id)], case.prediction.task, case.prediction.model_version

    stored = repository.stored_predictions(session, [key(c) for c in incoming], run=run)
    result = Persisted(rows=rows, erased=len(gone))
    explanations = []
    for d in decisions:
        if d.explanation is None:
            continue
        k = key(d.case)
        if not stored[k].escalated:
            result.conflicts += 1
            continue
        e = d.explanation
        explanations.append({"post_id": k[0], "task": k[1], "model_version": k[2], "run": run,
                             "llm_model": e.llm_model, "prompt_version": e.prompt_version,
                             "predicted_label": stored[k].label, "verdict": e.verdict,
                             "suggested_label": e.suggested_label, "final_label": d.final_label,
                             "rationale": e.rationale, "evidence": e.evidence, "reason": e.reason,
                             "latency_s": e.latency_s, "evidence_line": e.evidence_line,
                             "evidence_scores": list(d.case.evidence_scores) if d.case.evidence_scores else None,
                             "label_scores": e.label_scores,
                             "unsupported": list(e.unsupported) if e.unsupported is not None else None})
    rows["explanations"] = repository.upsert_explanations(session, explanations)
    finals = repository.final_labels(session, [k for k in stored if stored[k].escalated], run=run)
    claimed = {key(d.case): d.final_label for d in decisions if d.is_signal}  # tasks this worker has no model for
    signals, seen = [], set()
    for case in incoming:
        k = key(case)
        if k in seen:
            continue
        seen.add(k)
        s = stored[k]
        final = finals.get(k) if s.escalated else s.label
        if final is None:  # escalated, not explained yet: its explanation will bring the signal
            if case.escalation is None:
                result.orphans.append(case.model_copy(update={
                    "escalation": "redelivered",
                    "prediction": case.prediction.model_copy(update={
                        "label": s.label, "probabilities": s.probabilities, "confidence": s.confidence,
                        "escalated": True})}))
            continue
        labels = signal_labels.get(case.prediction.task)
        if (final in labels) if labels is not None else (claimed.get(k) == final):
            signals.append({"post_id": k[0], "task": k[1], "model_version": k[2], "run": run, "label": final,
                            "confidence": s.probabilities.get(final, s.confidence),
                            "decided_by": "classifier" if final == s.label else "llm",
                            "post_created_at": case.post.created_at})
            result.flagged.add((case.post.source, case.post.id, k[1], final))
    rows["signals"] = repository.upsert_signals(session, signals)
    for row in signals:
        telemetry.SIGNALS.labels(row["task"], row["label"]).inc()
    return result


def write(factory: sessionmaker[Session], cases: Sequence[Case], decisions: Sequence[Decision], *,
          author_key: bytes, signal_labels: Mapping[str, Collection[str]], run: str = LIVE_RUN) -> Persisted:
    """``persist`` in one transaction, timed and counted (rows inserted, latencies)."""
    started = time.perf_counter()
    with transaction(factory) as session:
        result = persist(session, cases, decisions, author_key=author_key, signal_labels=signal_labels, run=run)
    telemetry.DB_WRITE_SECONDS.observe(time.perf_counter() - started)
    for table in ("predictions", "explanations", "signals"):  # posts_seen counts lookups, not inserts
        telemetry.PERSISTED.labels(table).inc(result.rows[table])
    if result.erased:
        telemetry.ERASED_POSTS.labels("refused").inc(result.erased)
    done = datetime.now(UTC)
    for case in [*cases, *(d.case for d in decisions)]:
        telemetry.END_TO_END_SECONDS.observe(max(0.0, (done - case.post.created_at).total_seconds()))
        if case.received_at is not None:
            telemetry.PIPELINE_SECONDS.observe(max(0.0, (done - case.received_at).total_seconds()))
    return result


def process_batch(posts: Sequence[Post], runtime: Runtime, *, run: str = LIVE_RUN) -> BatchResult:
    """All stages in one process (the roles ``runtime`` was built for): the file mode and replays use
    this; the agents use its parts. Without an explainer nothing is escalated; without a database
    nothing is stored."""
    by_task, explainer = runtime.models, runtime.explainer
    # Admitted to the budget as they are classified, so nothing over it pays for its evidence.
    cases = classify_batch(posts, runtime.task_models, runtime.classifiers, runtime.policy,
                           budget=runtime.budget if explainer is not None else None)
    if explainer is None:  # nothing will explain them: stored as decided by the classifier, not as escalated
        cases = [c if c.escalation is None else c.model_copy(update={
            "escalation": None, "prediction": c.prediction.model_copy(update={"escalated": False})}) for c in cases]
    escalated = [i for i, case in enumerate(cases) if case.escalation is not None]
    explained: dict[int, Decision] = {}
    if explainer is not None and escalated:
        # As many at once as the explainer has llama.cpp contexts (ExplainerPool); order is kept.
        with ThreadPoolExecutor(max_workers=explainer.parallel, thread_name_prefix="explain") as pool:
            done = pool.map(lambda i: explain_case(cases[i], by_task[cases[i].prediction.task], explainer,
                                                   runtime.budget), escalated)
            explained = dict(zip(escalated, done, strict=True))
    decisions = [explained[i] if i in explained else decide_by_classifier(case, by_task[case.prediction.task].task)
                 for i, case in enumerate(cases)]
    result = BatchResult(posts=len(posts), predictions=len(cases), decisions=decisions)
    for d in decisions:
        result.escalated += d.case.escalation is not None
        if d.explanation is not None:
            verdict = d.explanation.verdict
            result.explained += verdict in ("confirm", "reject")
            result.over_budget += verdict == "over_budget"
            result.unverified += verdict == "unverified"
        result.flipped += d.final_label != d.case.prediction.label
        result.signals += d.is_signal
    if runtime.factory is not None:
        started = time.perf_counter()
        result.rows = write(runtime.factory, [], decisions, author_key=runtime.author_key,
                            signal_labels=runtime.signal_labels(), run=run).rows
        result.rows["write_ms"] = int((time.perf_counter() - started) * 1000)
    return result
