"""The ALEX training recipe, end to end: data -> split -> balance -> fine-tune -> calibrate -> model folder.

Each balancing piece (augmentation, resampling, class weights, bias tuning) can be switched off,
which is how the ablation runs. The folder written is self-describing: weights (safetensors),
tokenizer, ``model_card.json`` and evaluation plots.
"""

from __future__ import annotations

import dataclasses
import platform
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from monitor import __version__
from monitor.evaluation import (
    Report,
    evaluate,
    expected_calibration_error,
    plot_confusion,
    plot_precision_recall,
    plot_reliability,
    task_metric,
    top_label_ece,
)
from monitor.model_card import Calibration, DecisionRule, ModelCard, softmax, write_card
from monitor.models import file_sha256
from monitor.tasks import TaskDefinition
from monitor.training import augment, balance
from monitor.training.calibrate import (
    DecisionPolicy,
    choose_threshold,
    decision_policy,
    fit_calibration,
    fit_decision,
)
from monitor.corpus import Example, label_counts, load_examples
from monitor.encoding import normalise_text
from monitor.training.data import Splits, split_examples
from monitor.training.finetune import FineTuneConfig, fine_tune, predict_logits


@dataclass(frozen=True)
class BalanceOptions:
    """ALEX's balancing, piece by piece (all on = the full recipe)."""

    augment: bool = True
    copies: int = 2
    augment_rate: float = 0.1
    resample: bool = True
    target_ratio: float = 0.5
    resample_strategy: str = "over"
    class_weights: bool = True
    weight_scheme: str = "sqrt_inverse"
    tune_biases: bool = True

    @classmethod
    def none(cls) -> BalanceOptions:
        return cls(augment=False, resample=False, class_weights=False, tune_biases=False)


@dataclass(frozen=True)
class DataOptions:
    seed: int = 13
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    train_subsample: int | None = None
    skip_bad_rows: bool = False


@dataclass
class PreparedData:
    splits: Splits
    train: list[Example]
    notes: dict[str, Any] = field(default_factory=dict)


def stratified_subsample(examples: Sequence[Example], n: int, seed: int) -> list[Example]:
    """At most ``n`` examples keeping each label's share (at least one per label present)."""
    if n >= len(examples):
        return list(examples)
    rng = random.Random(seed)
    by_label: dict[str, list[Example]] = {}
    for e in sorted(examples, key=lambda e: e.id):
        by_label.setdefault(e.label, []).append(e)
    chosen: list[Example] = []
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        chosen += group[: max(1, round(n * len(group) / len(examples)))]
    rng.shuffle(chosen)
    return chosen


def prepare(task: TaskDefinition, data_path: Path, options: DataOptions) -> PreparedData:
    """Load, normalise, dedupe and split; subsample the training split if asked."""
    loaded = load_examples(data_path, task, skip_bad_rows=options.skip_bad_rows)
    examples = [dataclasses.replace(e, text=normalise_text(e.text)) for e in loaded.examples]
    splits = split_examples(examples, seed=options.seed, val_fraction=options.val_fraction,
                            test_fraction=options.test_fraction)
    train = list(splits.train)
    if options.train_subsample:
        train = stratified_subsample(train, options.train_subsample, options.seed)
    notes = {
        "file": str(data_path),
        "sha256": file_sha256(data_path),
        "rows_loaded": len(loaded.examples),
        "bad_rows_skipped": len(loaded.bad_rows),
        "split": {"seed": options.seed, "val_fraction": options.val_fraction, "test_fraction": options.test_fraction,
                  "train": len(splits.train), "val": len(splits.val), "test": len(splits.test),
                  "train_used": len(train), "train_subsample": options.train_subsample,
                  "duplicates": dataclasses.asdict(splits.report) if dataclasses.is_dataclass(splits.report)
                  else dict(splits.report)},
        "label_counts": {"train": dict(label_counts(train)), "val": dict(label_counts(splits.val)),
                         "test": dict(label_counts(splits.test))},
    }
    return PreparedData(splits, train, notes)


Serve = Literal["best", "encoder", "lexical", "stack"]
#: Cheapest first: on a tie of the validation metric the cheaper member serves.
MEMBER_COST = ("lexical", "encoder", "stack")


def choose_member(validation_scores: dict[str, float]) -> str:
    """The member with the highest validation metric (each scored with its own calibration and
    decision rule, the stack on out-of-fold rows); on a tie the cheapest to serve."""
    return max(validation_scores, key=lambda name: (round(validation_scores[name], 9), -MEMBER_COST.index(name)))


@dataclass(frozen=True)
class Head:
    """How logits become served labels: a calibration, then a decision rule, both fitted on validation."""

    calibration: Calibration
    decision: DecisionRule

    def scored(self, logits: np.ndarray, gold: np.ndarray, score: Any) -> float:
        """``score`` (``metric_scorer``) of the labels this head serves for ``logits``."""
        return float(score(self.decision.apply(self.calibration.apply(logits)), gold))

    def report(self, task: TaskDefinition, logits: np.ndarray, gold: Sequence[str]) -> Report:
        probs = self.calibration.apply(logits)
        return report_for(task, gold, probs, predicted=[task.labels[i] for i in self.decision.apply(probs)])


def fit_head(task: TaskDefinition, logits: np.ndarray, gold: np.ndarray, score: Any, *, dtype: str,
             seed: int, policy: DecisionPolicy | None = None) -> Head:
    """Calibration, then the decision rule ``policy`` says (default: the one for the task's metric)."""
    calibration = fit_calibration(logits, gold, dtype=dtype, seed=seed)
    if policy is None:
        policy = decision_policy(task.metric, over_all_labels=set(task.scored_labels) == set(task.labels),
                                 labels=len(task.labels))
    return Head(calibration, fit_decision(calibration.apply(logits), gold, score, metric=task.metric, policy=policy,
                                          positive=positive_index(task)))


def positive_index(task: TaskDefinition) -> int:
    """The index of the class whose F1 is the task's metric (``positive_label``); 1 where none is named."""
    return list(task.labels).index(task.positive_label) if task.positive_label in task.labels else 1


def fit_lexical_member(task: TaskDefinition, train: Sequence[Example], val: Sequence[Example], val_gold: np.ndarray,
                       tuned_for: Any, *, seed: int) -> tuple[Any, Head, np.ndarray, dict]:
    """The lexical model whose regularisation (``lexical.REGULARISATION_GRID``: strength and class
    weighting) scores best on validation, each setting with its own calibration and decision rule;
    a tie goes to the earlier setting (the plain default first). Returns the model, its head, its
    validation log-probabilities and what was tried."""
    from monitor.lexical import REGULARISATION_GRID, LexicalModel

    score = metric_scorer(task)
    models = LexicalModel.fit_grid([e.text for e in train], [e.label for e in train], list(task.labels),
                                   REGULARISATION_GRID, seed=seed)
    val_texts = [e.text for e in val]
    tried: dict[str, float] = {}
    best = None
    for setting, model in zip(REGULARISATION_GRID, models, strict=True):
        log_proba = model.read_posts(val_texts)  # as a worker reads posts (cut at LEXICAL_CHARS)
        head = fit_head(task, log_proba, val_gold, tuned_for, dtype="float64", seed=seed)
        value = head.scored(log_proba, val_gold, score)
        tried[setting.name()] = round(value, 6)
        if best is None or value > best[0] + 1e-9:
            best = (value, setting, model, head, log_proba)
    _, setting, model, head, log_proba = best
    return model, head, log_proba, {"validation": tried, "chosen": setting.name()}


def model_split(card: ModelCard, task: TaskDefinition, data: Path, split: Literal["validation", "test"], *,
                skip_bad_rows: bool = False) -> list[Example] | None:
    """The model's own ``split`` of ``data``, made again as its training run made it (seed, fractions,
    skipped bad rows from the card), or None when ``data`` is not the file it was trained on."""
    if file_sha256(data) != card.data.get("sha256"):
        return None
    fractions = card.data.get("split", {})
    options = DataOptions(seed=card.training.get("seed", 13), val_fraction=fractions.get("val_fraction", 0.1),
                          test_fraction=fractions.get("test_fraction", 0.2),
                          skip_bad_rows=skip_bad_rows or bool(card.data.get("bad_rows_skipped")))
    splits = prepare(task, data, options).splits
    return list(splits.val if split == "validation" else splits.test)


def held_out_rows(card: ModelCard, data: Path, split: Literal["validation", "test"] = "test", *,
                  skip_bad_rows: bool = False) -> tuple[list[Example], str]:
    """The model's held-out ``split`` when ``data`` is the file it was trained on (same sha256), else
    every row of ``data``; and which of the two it is, for the reader."""
    from monitor.tasks import load_task

    task = load_task(card.training.get("task_source", card.task))
    rows = model_split(card, task, data, split, skip_bad_rows=skip_bad_rows)
    if rows is not None:
        return rows, f"held-out {split} split"
    skip_bad_rows = skip_bad_rows or bool(card.data.get("bad_rows_skipped"))  # the training run skipped some
    return list(load_examples(data, task, skip_bad_rows=skip_bad_rows).examples), "every row"


def balance_training_split(train: Sequence[Example], labels: Sequence[str], options: BalanceOptions,
                           seed: int, synonyms: Any = None) -> tuple[list[Example], dict[str, float] | None, dict]:
    """Augment the minority classes, resample, and compute class weights, as ``options`` say."""
    notes: dict[str, Any] = {"options": dataclasses.asdict(options), "before": dict(Counter(e.label for e in train))}
    rows = list(train)
    if options.augment:
        result = augment.augment_minority(rows, copies=options.copies, seed=seed, rate=options.augment_rate,
                                          synonyms=synonyms)
        made = [dataclasses.replace(e, text=normalise_text(e.text)) for e in result.added]
        rows += made
        notes["augmentation"] = {"made": len(made), "failures": {str(k): v for k, v in result.failures.items()},
                                 "per_class": dict(result.made)}
    if options.resample:
        resampled = balance.resample(rows, seed=seed, target_ratio=options.target_ratio,
                                     strategy=options.resample_strategy)
        rows = list(resampled.examples)
    notes["after"] = dict(Counter(e.label for e in rows))
    weights = None
    if options.class_weights:
        weights = balance.class_weights([e.label for e in rows], labels, scheme=options.weight_scheme)
        notes["class_weights"] = weights
    return rows, weights, notes


def metric_scorer(task: TaskDefinition):
    """score(pred_idx, gold_idx) -> the task's metric, for early stopping and bias tuning."""
    labels = list(task.labels)

    def score(pred: np.ndarray, gold: np.ndarray) -> float:
        k = len(labels)
        matrix = np.zeros((k, k), dtype=np.int64)
        np.add.at(matrix, (gold, pred), 1)
        return task_metric(matrix, labels, task.metric, positive_label=task.positive_label,
                           metric_labels=task.metric_labels)

    return score


def report_for(task: TaskDefinition, gold: Sequence[str], probabilities: np.ndarray,
               predicted: Sequence[str] | None = None) -> Report:
    return evaluate(gold, probabilities, task.labels, metric=task.metric, positive_label=task.positive_label,
                    metric_labels=task.metric_labels, predicted=predicted)


def package_versions() -> dict[str, str]:
    import sklearn
    import torch
    import transformers

    return {"monitor": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "numpy": np.__version__, "scikit-learn": sklearn.__version__}


def train_model(
    task: TaskDefinition,
    task_source: str,
    data_path: Path,
    out_dir: Path,
    *,
    data_options: DataOptions,
    balance_options: BalanceOptions,
    finetune_config: FineTuneConfig,
    max_escalation_share: float = 0.1,
    serve: Serve = "encoder",
    synonyms: Any = None,
    progress: Any = None,
) -> ModelCard:
    """Train, calibrate, evaluate on the held-out split and write the model folder.

    ``serve`` says what the folder serves: the fine-tuned encoder; the lexical model
    (``monitor.lexical``) alone; a stack of both; or ``best``, whichever of the three scores highest
    on the validation split (``choose_member``). Every option but ``encoder`` also fits the lexical
    model and the stack, and the card keeps each member's validation metric and test report
    (``metrics.members``), so the choice can be checked against held-out data.

    ``monitor train`` asks for the stack: over 40 random re-splits of each shipped task's held-out
    rows, choosing among encoder, lexical model and stack by the validation metric served 0.3 to 2.4
    points less than always serving the stack on three tasks, and 0.8 point more on cssrs (within
    its standard error; ``tests/benchmarks/bench_stack_meta.py``): validation splits of 35 to 491
    rows cannot tell members apart reliably, and the pool already weighs them."""
    started = time.monotonic()
    prepared = prepare(task, data_path, data_options)
    labels = list(task.labels)
    index = {label: i for i, label in enumerate(labels)}
    train, weights, balance_notes = balance_training_split(prepared.train, labels, balance_options,
                                                           data_options.seed, synonyms)
    score = metric_scorer(task)
    result = fine_tune(train, prepared.splits.val, labels, score=score, config=finetune_config,
                       class_weights=weights, progress=progress)

    val_gold = np.array([index[e.label] for e in prepared.splits.val])
    tuned_for = score if balance_options.tune_biases else None
    test = prepared.splits.test
    test_gold = [e.label for e in test]
    enc = {"max_length": finetune_config.max_length, "truncation": finetune_config.truncation,
           "head_fraction": finetune_config.head_fraction}
    from monitor.encoding import encode

    encoder_test_logits = predict_logits(result.model, encode(result.tokenizer, [e.text for e in test], **enc),
                                         result.tokenizer.pad_token_id or 0, result.device,
                                         finetune_config.eval_batch_size)
    # Calibration first (probabilities), then the decision rule on top of them: the two stay apart.
    encoder_head = fit_head(task, result.val_logits, val_gold, tuned_for, dtype=result.logits_dtype,
                            seed=data_options.seed)
    members = {"encoder": encoder_head.report(task, encoder_test_logits, test_gold).as_dict()}
    candidates = {"encoder": (encoder_head, result.val_logits, encoder_test_logits)}
    spec, stack_notes, lexical = None, {"requested": serve}, None
    if serve != "encoder":
        from monitor.training.stacking import fit_stack

        lexical_started = time.monotonic()
        lexical, lexical_head, lexical_val, stack_notes["lexical_regularisation"] = fit_lexical_member(
            task, prepared.train, prepared.splits.val, val_gold, tuned_for, seed=data_options.seed)
        stack_notes["lexical_seconds"] = round(time.monotonic() - lexical_started, 1)
        lexical_test = lexical.read_posts([e.text for e in test])
        members["lexical"] = lexical_head.report(task, lexical_test, test_gold).as_dict()
        candidates["lexical"] = (lexical_head, lexical_val, lexical_test)
        stack_notes["lexical_features"] = {name: len(v) for name, v in lexical.vocabularies.items()}
        fitted = fit_stack(encoder_head.calibration, result.val_logits, lexical_val, val_gold, len(labels),
                           seed=data_options.seed)
        if fitted is None:
            stack_notes["skipped"] = "a class has fewer than 2 validation rows: too few to fit a stack on"
        else:
            # The stack's own head is fitted on out-of-fold stacked logits, never on rows its meta-model saw.
            stack_test = fitted.spec.combine(encoder_test_logits, lexical_test)
            stack_head = fit_head(task, fitted.oof_logits, val_gold, tuned_for, dtype=result.logits_dtype,
                                  seed=data_options.seed)
            members["stack"] = stack_head.report(task, stack_test, test_gold).as_dict()
            candidates["stack"] = (stack_head, fitted.oof_logits, stack_test)
    validation_scores = {name: head.scored(logits, val_gold, score)
                         for name, (head, logits, _) in candidates.items()}
    chosen = choose_member(validation_scores) if serve == "best" else serve
    if chosen not in candidates:  # a stack asked for, but validation was too small to fit one
        chosen = "encoder"
    stack_notes["validation_scores"] = validation_scores
    stack_notes["served"] = chosen
    if chosen == "stack":
        spec = fitted.spec
    head, val_logits, test_logits = candidates[chosen]
    calibration, decision = head.calibration, head.decision
    val_probs = calibration.apply(val_logits)
    val_served = decision.apply(val_probs)
    val_confidence = val_probs[np.arange(len(val_served)), val_served]
    threshold = choose_threshold(val_confidence, max_escalation_share)

    raw_test = report_for(task, test_gold, softmax(test_logits))
    final_probs = calibration.apply(test_logits)
    test_report = head.report(task, test_logits, test_gold)
    raw_val = softmax(val_logits)

    out_dir.mkdir(parents=True, exist_ok=True)
    result.model.to("cpu").save_pretrained(out_dir, safe_serialization=True)
    result.tokenizer.save_pretrained(out_dir)
    if lexical is not None:
        lexical.save(out_dir)
    weights_hash = file_sha256(out_dir / "model.safetensors")
    if lexical is not None:  # the folder holds both members: its version names both files
        import hashlib

        weights_hash = hashlib.sha256((weights_hash + file_sha256(out_dir / "lexical.npz")).encode()).hexdigest()
    plots = out_dir / "plots"
    plots.mkdir(exist_ok=True)
    plot_confusion(test_report, plots / "confusion_test.png", title=f"{task.name}: test confusion")
    plot_reliability(final_probs, np.array([index[g] for g in test_gold]), plots / "reliability_test.png",
                     title=f"{task.name}: test reliability", before=softmax(test_logits))
    plot_reliability(val_probs, val_gold, plots / "reliability_validation.png",
                     title=f"{task.name}: validation reliability", before=raw_val)
    plot_precision_recall(test_gold, final_probs, labels, plots / "precision_recall_test.png",
                          title=f"{task.name}: test precision-recall")

    card = ModelCard(
        model_version=f"{task.name}-{weights_hash[:12]}",
        task=task.name,
        labels=labels,
        signal_labels=list(task.signal_labels),
        metric=task.metric,
        positive_label=task.positive_label,
        metric_labels=list(task.metric_labels) if task.metric_labels else None,
        base_model=str(finetune_config.model_path),
        max_length=finetune_config.max_length,
        truncation=finetune_config.truncation,
        head_fraction=finetune_config.head_fraction,
        format_version=2,
        calibration=calibration,
        decision=decision,
        stack=spec,
        serves=chosen,
        escalation_threshold=threshold,
        escalation_max_share=max_escalation_share,
        metrics={
            "validation": {"task_metric_at_best_epoch": result.best_score,
                           "members": validation_scores,
                           "ece_before": top_label_ece(raw_val, val_gold),
                           "ece_after": top_label_ece(val_probs, val_gold),
                           "ece_served": expected_calibration_error(val_confidence, val_served == val_gold),
                           "escalated_share": float((val_confidence < threshold).mean())},
            "test_uncalibrated": raw_test.as_dict(),
            "test": test_report.as_dict(),
            "members": members,
        },
        data={**prepared.notes, "balancing": balance_notes, "stack": stack_notes},
        training={"task_source": task_source, "seed": data_options.seed, "device": result.device,
                  "best_epoch": result.best_epoch, "history": result.history,
                  "config": {k: str(v) if isinstance(v, Path) else v
                             for k, v in dataclasses.asdict(finetune_config).items()},
                  "seconds": time.monotonic() - started},
        versions=package_versions(),
        created_at=datetime.now(UTC),
    )
    write_card(out_dir, card)
    return card
