"""Benchmark (not a test): which stack meta-model, and which serving rule, does best on held-out rows?

    .venv/bin/python tests/benchmarks/bench_stack_meta.py FOLDER [FOLDER ...] [--resplits 40] [--out DIR]
    .venv/bin/python tests/benchmarks/bench_stack_meta.py FOLDER --single finetune_plain=OTHER_FOLDER ...

Each FOLDER is a model folder trained with its lexical member (``monitor train``, any ``--serve`` but
encoder) on a file that is still where its card says. The benchmark reads the encoder's logits
(float32) and the lexical model's log-probabilities for the folder's own validation and test rows,
pools those held-out rows, and re-splits them at random (stratified, validation as large as the
folder's) ``--resplits`` times. On each re-split it fits, on the validation part only, what
``monitor train`` fits: each member's calibration and decision rule, the pooled stack
(``monitor.training.stacking``, with its head on out-of-fold logits) and, for comparison, the
multinomial logistic-regression meta-model earlier cards used. It then scores the test part. The
ablation's TF-IDF floor (``tfidf_lr``, arg-max, trained on the rows the folder trained on) and each
``--single`` folder (another fine-tune of the same task, data and split, with its own recipe's head)
are scored on the same re-splits, so the stack is compared with the best single model in expectation
(the paired difference over re-splits), not on one split of a few hundred rows. The floor is also
scored as a lexical member would be (with its own calibration and decision rule, pooled with the
encoder in the lexical model's place, and pooled as a third member beside both). The members and the
stack are also scored under each decision policy (tuned biases, arg-max, prior-corrected arg-max and,
with two classes, the plug-in F1 threshold;
``training.calibrate.decision_policy`` picks one by the task's metric for the rows that name none).

Printed per folder: the mean test task metric (and its standard error over re-splits) of each member
served alone, of each stack, and of choosing by the validation metric (``--serve best``), which is
what a single split's validation score is worth when it picks the member. The members are trained
once, so the spread is that of the held-out rows (which is what decides between members), not of
training. A bar chart goes to ``--out``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np


def _encoder_logits(folder: Path, texts: list[str]) -> np.ndarray:
    """The folder's encoder alone (float32 on the CPU), whatever the folder serves."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from monitor.classifier import EncoderClassifier
    from monitor.model_card import read_card

    card = read_card(folder).model_copy(update={"serves": "encoder", "stack": None})
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    return EncoderClassifier(model, AutoTokenizer.from_pretrained(folder), card, device="cpu", batch_size=32,
                             weights="float32").encoder_logits(texts)


def lexical_by_cv(task, train, seed: int, folds: int = 5):  # noqa: ANN001, ANN201
    """The lexical member with its regularisation chosen on the training rows instead of validation:
    each ``REGULARISATION_GRID`` setting is fitted on 4/5 of them and predicts the rest, and the one
    whose out-of-fold log-probabilities score highest (with a head fitted on them, under the task's
    rule) is fitted on every training row. Returns (model, chosen setting's name, scores)."""
    from sklearn.model_selection import StratifiedKFold

    from monitor.lexical import REGULARISATION_GRID, LexicalModel
    from monitor.training.recipe import fit_head, metric_scorer

    texts = LexicalModel.prepare([e.text for e in train])
    labels = list(task.labels)
    gold = np.array([labels.index(e.label) for e in train])
    oof = np.zeros((len(REGULARISATION_GRID), len(train), len(labels)))
    for kept, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(texts, gold):
        models = LexicalModel.fit_grid([texts[i] for i in kept], [train[i].label for i in kept], labels,
                                       REGULARISATION_GRID, seed=seed)
        for k, model in enumerate(models):
            oof[k][held] = model.log_proba([texts[i] for i in held])
    score = metric_scorer(task)
    scores = [fit_head(task, oof[k], gold, score, dtype="float64", seed=seed).scored(oof[k], gold, score)
              for k in range(len(REGULARISATION_GRID))]
    best = int(np.argmax(scores))
    model = LexicalModel.fit_grid(texts, [e.label for e in train], labels, [REGULARISATION_GRID[best]], seed=seed)[0]
    return model, REGULARISATION_GRID[best].name(), {g.name(): round(v, 4) for g, v in zip(REGULARISATION_GRID, scores, strict=True)}


def held_out_outputs(folder: Path, singles: dict[str, Path], *, lexical_cv: bool = False) -> dict[str, np.ndarray]:
    """Gold indices of the folder's validation rows then its test rows, how many are validation, the
    encoder's logits and the lexical model's log-probabilities of them, the TF-IDF floor's
    (``tfidf_lr``, trained on the rows the folder trained on) and the encoder logits of each other folder in
    ``singles`` (same task, data and split)."""
    from monitor.errors import ConfigError
    from monitor.lexical import LexicalModel
    from monitor.model_card import read_card
    from monitor.tasks import load_task
    from monitor.training.ablation import tfidf_floor
    from monitor.training.recipe import DataOptions, model_split, prepare

    card = read_card(folder)
    if not (folder / "lexical.npz").exists():
        raise ConfigError(f"{folder} has no lexical member: train it with --serve stack or best")
    task = load_task(card.training.get("task_source", card.task))
    data = Path(card.data["file"])
    rows = {split: model_split(card, task, data, split) for split in ("validation", "test")}
    if any(split is None for split in rows.values()):
        raise ConfigError(f"{data} is not the file {folder} was trained on (its sha256 differs)")
    examples = rows["validation"] + rows["test"]
    texts = [e.text for e in examples]
    split = card.data["split"]
    # The rows the folder trained on: its training split, subsampled as its run was (--train-subsample).
    train = prepare(task, data, DataOptions(seed=split["seed"], val_fraction=split["val_fraction"],
                                            test_fraction=split["test_fraction"],
                                            train_subsample=split.get("train_subsample"))).train
    if len(train) != split.get("train_used", len(train)):
        raise ConfigError(f"{data} gives {len(train)} training rows, {folder} trained on {split['train_used']}")
    floor, _ = tfidf_floor(task, train, examples, split["seed"])
    outputs = {"gold": np.array([task.labels.index(e.label) for e in examples]),
               "validation_rows": np.array(len(rows["validation"])), "encoder": _encoder_logits(folder, texts),
               "lexical": LexicalModel.load(folder).read_posts(texts), "tfidf_lr": np.log(np.clip(floor, 1e-12, 1))}
    if lexical_cv:
        model, chosen, scores = lexical_by_cv(task, train, split["seed"])
        print(f"lexical member chosen on the training rows: {chosen} (out-of-fold {task.metric}: {scores}); "
              f"the folder's: {card.data['stack'].get('lexical_regularisation', {}).get('chosen')}")
        outputs["lexical (chosen on training rows)"] = model.read_posts(texts)
    for name, other in singles.items():
        other_card = read_card(other)
        if other_card.data.get("sha256") != card.data.get("sha256") or other_card.data.get("split") != split:
            raise ConfigError(f"{other} was not trained on the same data and split as {folder}")
        outputs[name] = _encoder_logits(other, texts)
        outputs[f"{name} tunes biases"] = np.array(other_card.data["balancing"]["options"]["tune_biases"])
    return outputs


def logistic_stack(calibration, encoder: np.ndarray, lexical: np.ndarray, gold: np.ndarray, labels: int,
                   folds: int, seed: int = 13):  # noqa: ANN001, ANN201
    """The earlier meta-model: multinomial logistic regression (C=1) over both members' log-probabilities,
    with out-of-fold logits on validation; returns (oof logits, a function of test outputs)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    from monitor.lexical import full_coefficients
    from monitor.model_card import stack_features

    x = stack_features(calibration, encoder, lexical)
    oof = np.zeros((len(gold), labels))
    for kept, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, gold):
        coef, intercept = full_coefficients(LogisticRegression(max_iter=2000, random_state=seed).fit(x[kept], gold[kept]),
                                            labels)
        oof[held] = x[held] @ coef.T + intercept
    coef, intercept = full_coefficients(LogisticRegression(max_iter=2000, random_state=seed).fit(x, gold), labels)
    return oof, lambda e, lx: stack_features(calibration, e, lx) @ coef.T + intercept


#: Members also scored under each decision policy (``training.calibrate.decision_policy`` picks one
#: by the task's metric for the rows without a suffix).
DECISION_VARIANTS = ("encoder", "lexical", "stack (pool)", "tfidf_lr with a head")
POLICY_NAMES = {"tuned": "tuned biases", "argmax": "arg-max", "prior": "prior-corrected arg-max",
                "plugin": "plug-in F1 threshold"}


def resplit_scores(task, outputs: dict[str, np.ndarray], singles: list[str], resplits: int  # noqa: ANN001
                   ) -> tuple[dict[str, list[float]], list]:
    from sklearn.model_selection import train_test_split

    from monitor.model_card import stack_features
    from monitor.training.calibrate import fit_decision
    from monitor.training.recipe import Head, choose_member, fit_head, metric_scorer, positive_index
    from monitor.training.stacking import fit_stack, pool_matrix, pool_out_of_fold

    score = metric_scorer(task)
    gold, enc, lex = outputs["gold"], outputs["encoder"], outputs["lexical"]
    labels = len(task.labels)
    results: dict[str, list[float]] = {}
    weights, weights3 = [], []
    for r in range(resplits):
        val, test = train_test_split(np.arange(len(gold)), train_size=int(outputs["validation_rows"]),
                                     stratify=gold, random_state=r)
        vg, tg = gold[val], gold[test]
        # The floor is arg-max, as in the ablation; the other fine-tunes get their recipe's head.
        floor = outputs["tfidf_lr"]
        results.setdefault("tfidf_lr", []).append(float(score(floor[test].argmax(1), tg)))
        for name in singles:
            head = fit_head(task, outputs[name][val], vg, score if outputs[f"{name} tunes biases"] else None,
                            dtype="float32", seed=13)
            results.setdefault(name, []).append(head.scored(outputs[name][test], tg, score))
        encoder_head = fit_head(task, enc[val], vg, score, dtype="float32", seed=13)
        members = {"encoder": (enc[val], enc[test], "float32"), "lexical": (lex[val], lex[test], "float64")}
        pooled = fit_stack(encoder_head.calibration, enc[val], lex[val], vg, labels)
        if pooled is not None:
            weights.append(pooled.spec.weights)
            members["stack (pool)"] = (pooled.oof_logits, pooled.spec.combine(enc[test], lex[test]), "float32")
            oof, combine = logistic_stack(encoder_head.calibration, enc[val], lex[val], vg, labels, pooled.spec.folds)
            members["stack (logistic)"] = (oof, combine(enc[test], lex[test]), "float32")
        # The floor as a lexical member would be: its own head, and pooled with the encoder.
        members["tfidf_lr with a head"] = (floor[val], floor[test], "float64")
        if "lexical (chosen on training rows)" in outputs:
            cv = outputs["lexical (chosen on training rows)"]
            members["lexical (chosen on training rows)"] = (cv[val], cv[test], "float64")
            pooled_cv = fit_stack(encoder_head.calibration, enc[val], cv[val], vg, labels)
            if pooled_cv is not None:
                members["stack (pool, lexical chosen on training rows)"] = (
                    pooled_cv.oof_logits, pooled_cv.spec.combine(enc[test], cv[test]), "float32")
        pooled_floor = fit_stack(encoder_head.calibration, enc[val], floor[val], vg, labels)
        if pooled_floor is not None:
            members["stack (pool of encoder and tfidf_lr)"] = (
                pooled_floor.oof_logits, pooled_floor.spec.combine(enc[test], floor[test]), "float32")
            # Three members: the floor's configuration beside the lexical member.
            x_val = np.concatenate([stack_features(encoder_head.calibration, enc[val], lex[val]), floor[val]], axis=1)
            x_test = np.concatenate([stack_features(encoder_head.calibration, enc[test], lex[test]), floor[test]],
                                    axis=1)
            w3, b3, oof3 = pool_out_of_fold(x_val, vg, labels, pooled_floor.spec.folds)
            weights3.append(w3)
            members["stack (pool of encoder, lexical and tfidf_lr)"] = (
                oof3, x_test @ pool_matrix(w3, labels).T + b3, "float32")
        on_validation = {}
        for name, (v, t, dtype) in members.items():
            head = fit_head(task, v, vg, score, dtype=dtype, seed=13)
            results.setdefault(name, []).append(head.scored(t, tg, score))
            on_validation[name] = head.scored(v, vg, score)
            if name in DECISION_VARIANTS:  # the same calibration, each decision policy
                calibrated = head.calibration.apply(v)
                for policy in (p for p in POLICY_NAMES if p != "plugin" or labels == 2):
                    other = Head(head.calibration, fit_decision(calibrated, vg, score, metric=task.metric,
                                                                policy=policy, positive=positive_index(task)))
                    results.setdefault(f"{name}, {POLICY_NAMES[policy]}", []).append(other.scored(t, tg, score))
        for stack in ("stack (pool)", "stack (logistic)"):
            if stack in on_validation:
                pick = choose_member({"encoder": on_validation["encoder"], "lexical": on_validation["lexical"],
                                      "stack": on_validation[stack]})
                results.setdefault(f"best on validation, {stack}", []).append(
                    results[stack if pick == "stack" else pick][-1])
    return results, (weights, weights3)


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from rich.console import Console
    from rich.table import Table

    from monitor.evaluation import pyplot
    from monitor.model_card import read_card
    from monitor.tasks import load_task

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--single", action="append", default=[], metavar="NAME=FOLDER",
                        help="another fine-tuned folder of the first folder's task, data and split, scored alone "
                             "with its recipe's head (e.g. finetune_plain=/tmp/acc3/druglib_sentiment/finetune_plain); "
                             "repeatable; only with one folder")
    parser.add_argument("--resplits", type=int, default=40)
    parser.add_argument("--lexical-cv", action="store_true",
                        help="also a lexical member whose regularisation is chosen by 5-fold cross-validation on "
                             "the training rows (not on validation), alone and pooled")
    parser.add_argument("--out", type=Path, default=Path("bench-stack-meta"))
    args = parser.parse_args()
    console = Console()
    args.out.mkdir(parents=True, exist_ok=True)
    plotted = []
    for folder in args.folders:
        card = read_card(folder)
        task = load_task(card.training.get("task_source", card.task))
        singles = dict(item.split("=", 1) for item in args.single)
        if singles and len(args.folders) > 1:
            parser.error("--single goes with one folder")
        outputs = held_out_outputs(folder, {name: Path(path) for name, path in singles.items()},
                                   lexical_cv=args.lexical_cv)
        results, (weights, weights3) = resplit_scores(task, outputs, list(singles), args.resplits)
        table = Table("served", f"mean test {task.metric}", "standard error",
                      title=f"{task.name} ({folder}): {args.resplits} re-splits of {len(outputs['gold'])} held-out rows, "
                            f"validation {int(outputs['validation_rows'])}")
        for name, values in results.items():
            table.add_row(name, f"{np.mean(values):.4f}", f"{np.std(values) / np.sqrt(len(values)):.4f}")
        console.print(table)
        alone = [name for name in ("tfidf_lr", *singles, "encoder", "lexical") if name in results]
        best = max(alone, key=lambda name: np.mean(results[name]))
        for served in ("stack (pool)", "stack (pool of encoder, lexical and tfidf_lr)",
                       "stack (pool, lexical chosen on training rows)", "best on validation, stack (pool)"):
            if served in results:
                gap = np.array(results[served]) - np.array(results[best])
                console.print(f"{served} - best single model ({best}): {gap.mean():+.4f} "
                              f"(paired standard error {gap.std() / np.sqrt(len(gap)):.4f}; ahead in "
                              f"{int((gap > 0).sum())} of {len(gap)} re-splits, level in {int((gap == 0).sum())})")
        if weights:
            mean = np.mean(weights, axis=0)
            console.print(f"pool weights (mean): encoder {mean[0]:.2f}, lexical {mean[1]:.2f}")
        if weights3:
            mean = np.mean(weights3, axis=0)
            console.print(f"three-member pool weights (mean): encoder {mean[0]:.2f}, lexical {mean[1]:.2f}, "
                          f"tfidf_lr {mean[2]:.2f}")
        plotted.append((task.name, results))
    plt = pyplot()
    rows = max(len(results) for _, results in plotted)
    fig, axes = plt.subplots(1, len(plotted), figsize=(4.5 * len(plotted), 1.5 + 0.2 * rows), squeeze=False)
    for ax, (name, results) in zip(axes[0], plotted, strict=True):
        names = list(results)
        means = [np.mean(results[n]) for n in names]
        errors = [np.std(results[n]) / np.sqrt(len(results[n])) for n in names]
        ax.barh(range(len(names)), means, xerr=errors, color="#4c72b0")
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlim(min(means) - 0.05, max(means) + 0.03)
        ax.set_title(name, fontsize=9)
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(args.out / "stack_meta.png", dpi=110)
    console.print(f"plot: {args.out / 'stack_meta.png'}")


if __name__ == "__main__":
    main()
