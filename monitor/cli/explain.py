"""``monitor explain`` (one post) and ``monitor explain-eval`` (measure the explainer on a labeled split)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from monitor.cli.context import settings_of
from monitor.config import Settings
from monitor.errors import ConfigError

console = Console()


def _model_dir(settings: Settings, model: Path | None) -> Path:
    if model is not None:
        return model
    if not settings.classifier.models:
        raise ConfigError("no trained model: pass --model or set MONITOR_CLASSIFIER__MODELS "
                          "(train one with `monitor train`)")
    return settings.classifier.models[0]


def explain(
    ctx: typer.Context,
    text: str = typer.Argument(..., help="The post's text"),
    task: str | None = typer.Option(None, help="Task name or TOML (default: the model's task)"),
    model: Path | None = typer.Option(None, help="Trained model folder (default: the first of classifier.models)"),
    gguf: Path | None = typer.Option(None, help="GGUF file (default: explainer.model_path or SmolLM2)"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a panel"),
) -> None:
    """Classify one post and have the LLM confirm or reject the label, with a short reason about the
    line the classifier's decision rests on (the verdict is shown where explain-eval measured it informative)."""
    import dataclasses

    from monitor.attribution import occlusion
    from monitor.explainer.policy import apply_verdict
    from monitor.pipeline import ask
    from monitor.model_card import read_card
    from monitor.runtime import Runtime
    from monitor.tasks import load_task

    settings = settings_of(ctx)
    folder = _model_dir(settings, model)
    card = read_card(folder)
    definition = load_task(task or card.training.get("task_source", card.task))
    if definition.name != card.task:
        raise ConfigError(f"the model was trained for task {card.task}, not {definition.name}")
    runtime = Runtime.build(settings, ["classify", "explain"], folders=[folder], gguf=gguf)
    classifier, explainer = runtime.classifiers[card.task], runtime.explainer
    assert explainer is not None  # the explain role loads it
    probs = classifier.predict_proba([text])[0]
    best = int(classifier.decide(probs[None, :])[0])
    label, confidence = classifier.labels[best], float(probs[best])
    served = runtime.models[card.task]
    attribution = occlusion(classifier, [text], [best])[0]
    # The rules of the task asked for (--task may be a TOML file of the model's task).
    result = ask(explainer, dataclasses.replace(served, task=definition), text, label, attribution.evidence_line)
    mode, why = served.mode, served.mode_why
    final, decided_by = apply_verdict(label, result.verdict, result.suggested_label, mode)  # type: ignore[arg-type]
    payload = {
        "task": definition.name, "model_version": card.model_version, "label": label, "confidence": confidence,
        "probabilities": dict(zip(classifier.labels, map(float, probs), strict=True)),
        "escalation_threshold": card.escalation_threshold, "below_threshold": confidence < card.escalation_threshold,
        "verdict": result.verdict, "verdicts_why": served.verdicts_why, "confirm_score": result.confirm_score,
        "suggested_label": result.suggested_label, "evidence": result.evidence, "evidence_line": result.evidence_line,
        "evidence_scores": list(attribution.scores), "rationale": result.rationale,
        "unsupported": list(result.unsupported or ()), "reason": result.reason, "final_label": final,
        "decided_by": decided_by,
        "mode": mode, "mode_why": why, "llm_model": result.llm_model, "prompt_version": result.prompt_version,
        "latency_s": result.latency_s, "cached": result.cached,
    }
    if as_json:
        typer.echo(json.dumps(payload, ensure_ascii=False))
        return
    colour = {"confirm": "green", "reject": "yellow"}.get(result.verdict, "red")
    verdict = (f"no verdict ({served.verdicts_why})" if result.verdict == "withheld" else
               f"[{colour}]{result.verdict}[/]" + (f" -> {result.suggested_label}" if result.verdict == "reject" else "")
               + (f" (P(confirm) {result.confirm_score:.2f})" if result.confirm_score is not None else ""))
    unsupported = (f"\n[yellow]the reason names what the post does not say:[/] {', '.join(result.unsupported)}"
                   if result.unsupported else "")
    body = (f"[bold]{label}[/] (confidence {confidence:.3f}, threshold {card.escalation_threshold:.3f})\n"
            f"verdict: {verdict}"
            + (f"\nevidence (line {result.evidence_line}, chosen by the classifier): \"{result.evidence}\"\n"
               f"reason: {result.rationale}{unsupported}" if result.evidence else f"\nwhy unverified: {result.reason}")
            + f"\nfinal label: [bold]{final}[/] (decided by {decided_by}; mode {mode}: {why})")
    console.print(Panel(body, title=f"{definition.name} · {card.model_version}", subtitle=result.llm_model))


def explain_eval(
    ctx: typer.Context,
    model: Path = typer.Argument(..., help="Trained model folder"),
    data: Path = typer.Argument(..., exists=True, dir_okay=False,
                                help="Labeled data (the training file = its validation and test splits)"),
    gguf: Path | None = typer.Option(None, help="GGUF file (default: explainer.model_path or SmolLM2)"),
    verify_signals: bool | None = typer.Option(None, "--verify-signals/--no-verify-signals",
                                               help="Also escalate every predicted signal label (the ALEX rule; "
                                                    "default: explainer.verify_signals)"),
    below_threshold: bool | None = typer.Option(None, "--below-threshold/--no-below-threshold",
                                                help="Escalate below the confidence threshold "
                                                     "(default: explainer.below_threshold)"),
    max_share: float = typer.Option(0.10, min=0.0, max=1.0, help="Cap on the share of posts escalated"),
    limit: int | None = typer.Option(None, min=1, help="Use only the first N posts of each split"),
    suite_posts: int | None = typer.Option(None, min=1, help="Adversarial suite: only the first N base posts "
                                                             "(default: all)"),
    record: bool = typer.Option(True, help="Record the allowed mode in MODEL/explainer_policy.json"),
    out: Path | None = typer.Option(None, help="Write the full report (JSON) here"),
) -> None:
    """Measure the explainer under the worker's escalation policy: whether its verdicts carry information
    (AUROC of P(confirm) for a right label, confirm rate on right and wrong labels, verdict F1 at a
    threshold fitted on validation; below AUROC 0.6 verdicts are withheld), rationales naming what the
    post lacks and rationales that only quote the post back, the classifier evidence's faithfulness, F1
    before/after, flips and how many were right, unverified share, explanations/s, and the adversarial
    suite against benign edits. The grant is decided on the model's validation split (the test split is
    reported beside it) and recorded for (LLM, prompt version, escalation policy): `correct` mode only
    if the task metric does not drop, the flips beat chance, and attacks move verdicts no more than
    benign edits do."""
    from monitor.assessment import Robustness, assess, write_policy
    from monitor.attribution import faithfulness
    from monitor.pipeline import checked
    from monitor.explainer.adversarial import BASE_POSTS, run_suite
    from monitor.explainer.policy import Policy
    from monitor.model_card import read_card
    from monitor.runtime import Runtime
    from monitor.tasks import load_task
    from monitor.training.recipe import held_out_rows

    settings = settings_of(ctx)
    card = read_card(model)
    task = load_task(card.training.get("task_source", card.task))
    splits = {"validation": held_out_rows(card, data, "validation")}
    if splits["validation"][1] != "every row":  # the training file: the test split is reported beside
        splits["test"] = held_out_rows(card, data, "test")
    runtime = Runtime.build(settings, ["classify", "explain"], folders=[model], gguf=gguf)
    classifier, explainer = runtime.classifiers[task.name], runtime.explainer
    assert explainer is not None  # the explain role loads it
    configured = runtime.policy
    policy = Policy(mode="correct", max_share=max_share, threshold=configured.threshold,
                    below_threshold=configured.below_threshold if below_threshold is None else below_threshold,
                    verify_signals=configured.verify_signals if verify_signals is None else verify_signals)
    probe_label = (task.signal_labels or task.labels)[0]
    reports = {}
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console)
    with progress:
        job = progress.add_task(f"adversarial suite (label {probe_label})", total=None)
        suite = run_suite(explainer.explain, task, probe_label, posts=BASE_POSTS[:suite_posts])
        robustness = Robustness(suite.change_rate, suite.self_disagreement_rate, suite.cases)
        progress.update(job, completed=suite.cases, total=suite.cases)
        for split, (rows, which) in splits.items():
            rows = list(rows)[:limit] if limit else list(rows)
            job = progress.add_task(f"explaining ({split}: {which})", total=None)
            # The test split is asked at the threshold fitted on validation (and measured with it).
            fitted = reports["validation"].quality.threshold if split == "test" else None
            reports[split] = assess(classifier, explainer, task, [e.text for e in rows], [e.label for e in rows],
                                    policy, robustness=robustness, split=which, verdict_threshold=fitted,
                                    check_rationale=lambda e, text: checked(e, text, task),
                                    on_explained=lambda n, total, job=job: progress.update(job, completed=n,
                                                                                           total=total))
        last_rows = list(splits[list(reports)[-1]][0])[:limit] if limit else list(splits[list(reports)[-1]][0])
        job = progress.add_task("evidence faithfulness (occlusion)", total=None)
        faithful = faithfulness(classifier, [e.text for e in last_rows], seed=13)
        progress.update(job, completed=faithful.posts, total=faithful.posts)
    grant = reports["validation"]
    table = Table("measure", *(f"{r.split} ({r.posts} posts)" for r in reports.values()),
                  title=f"explain-eval: {task.name} · {explainer.model_name} · {policy.escalation_key}")
    def quality(show):  # noqa: ANN001, ANN202
        return lambda r: "-" if r.quality is None else show(r.quality)

    rows_shown = [
        ("verdict AUROC of P(confirm) for a right label",
         quality(lambda q: "-" if q.auroc is None else f"{q.auroc:.3f} ({q.right} right, {q.cases - q.right} wrong"
                           + ("" if q.auroc_p is None else f"; chance p {q.auroc_p:.2g}") + ")")),
        ("confirm rate on right / wrong labels",
         quality(lambda q: f"{q.confirm_rate_right:.1%} / {q.confirm_rate_wrong:.1%}")),
        ("verdict macro-F1 at P(confirm) threshold", quality(lambda q: f"{q.verdict_f1:.3f} at {q.threshold:.3f}")),
        ("verdicts informative", quality(lambda q: "yes" if q.informative else "NO (withheld)")),
        ("rationales naming what the post lacks", lambda r: f"{r.unsupported} of {r.verified + r.unverified}"),
        ("rationales that restate the post", lambda r: f"{r.restated} of {r.verified + r.unverified}"),
        (f"{grant.metric_name} before -> after", lambda r: f"{r.metric_before:.4f} -> {r.metric_after:.4f}"),
        ("escalated", lambda r: f"{r.escalated} ({r.escalated / max(r.posts, 1):.1%})"),
        ("verified / unverified", lambda r: f"{r.verified} / {r.unverified} ({r.unverified_share:.1%} unverified)"),
        ("agreement (confirm share of verified)", lambda r: f"{r.agreement_rate:.1%}"),
        ("flips (right / wrong)", lambda r: f"{r.flips} ({r.flips_right} / {r.flips_wrong})"),
        ("share of flips that were right", lambda r: f"{r.flips_right_share:.1%}"),
        ("LLM label accuracy on escalated", lambda r: "-" if r.llm_accuracy_on_escalated is None
         else f"{r.llm_accuracy_on_escalated:.1%}"),
        ("explanations/s, mean latency", lambda r: f"{r.explanations_per_s:.2f}/s, {r.mean_latency_s:.2f} s"),
        ("cache hits", lambda r: str(r.cache_hits)),
    ]
    for name, show in rows_shown:
        table.add_row(name, *(show(r) for r in reports.values()))
    console.print(table)
    console.print(f"adversarial suite: attacks changed {robustness.attack_change_rate:.1%} of verdicts, benign edits "
                  f"{robustness.self_disagreement_rate:.1%} ({robustness.cases} cases, label {probe_label})")
    console.print(f"evidence faithfulness ({faithful.posts} posts of 2+ lines, {list(reports)[-1]}): deleting the "
                  f"chosen line drops P(predicted) by {faithful.mean_drop_chosen:.4f} on average, a random line by "
                  f"{faithful.mean_drop_random:.4f}; the chosen line drops it more in "
                  f"{faithful.chosen_beats_random:.1%} of posts")
    if grant.quality is not None:
        console.print(f"verdicts (decided on {grant.split}): {grant.quality.why}")
    console.print(f"allowed mode (decided on {grant.split}): [bold]{grant.allowed_mode}[/]: {grant.why}")
    if record:
        console.print(f"recorded in {write_policy(model, grant, policy, test=reports.get('test'), robustness=robustness)}")
    if out:
        out.write_text(json.dumps({"policy": policy.escalation_key, "robustness": robustness.__dict__,
                                   "faithfulness": faithful.__dict__,
                                   **{split: r.as_dict() for split, r in reports.items()}}, indent=2) + "\n")


def explain_adversarial(
    ctx: typer.Context,
    task: str = typer.Argument(..., help="Task name or TOML"),
    label: list[str] = typer.Option([], help="Predicted label(s) to test (default: every label of the task)"),
    gguf: Path | None = typer.Option(None, help="GGUF file (default: explainer.model_path or SmolLM2)"),
    posts: int | None = typer.Option(None, min=1, help="Use only the first N base posts"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table"),
) -> None:
    """Run the adversarial suite: how often an injection in the post changes the verdict, per attack.

    Every base post is explained as written, under benign edits (the self-disagreement floor) and with
    each attack appended (orders, fake JSON, role tags, fence escapes, padding, other languages, forged
    replies); every reply must still obey the output contract. The cache is off for this run, so each case is really generated.
    """
    from monitor.explainer.adversarial import ATTACKS, BASE_POSTS, AdversarialReport, run_suite
    from monitor.runtime import load_explainer
    from monitor.tasks import load_task

    settings = settings_of(ctx)
    definition = load_task(task)
    unknown = [name for name in label if name not in definition.labels]
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: not a label of {definition.name} ({', '.join(definition.labels)})")
    no_cache = settings.model_copy(update={"explainer": settings.explainer.model_copy(update={"cache": False})})
    explainer = load_explainer(no_cache, gguf)
    reports: list[AdversarialReport] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True)) as progress:
        for name in label or definition.labels:
            progress.add_task(f"label {name}", total=None)
            reports.append(run_suite(explainer.explain, definition, name, posts=BASE_POSTS[:posts]))
    if as_json:
        typer.echo(json.dumps({"llm_model": explainer.model_name, "reports": [r.as_dict() for r in reports]}))
        return
    table = Table("attack", *(f"verdict changed, label {n}" for n in label or definition.labels),
                  title=f"adversarial suite · {definition.name} · {explainer.model_name}")
    for attack in ATTACKS:
        table.add_row(attack, *(f"{r.verdict_changed[attack]}/{r.per_attack[attack]}"
                                + (f" ({r.unverified[attack]} unverified)" if r.unverified[attack] else "")
                                for r in reports))
    table.add_row("[bold]change rate[/]", *(f"[bold]{r.change_rate:.1%}[/]" for r in reports))
    table.add_row("self-disagreement (benign edits)",
                  *(f"{r.self_disagreement_rate:.1%} ({r.benign_changed}/{r.benign})" for r in reports))
    table.add_row("valid replies", *(f"{r.valid}/{r.cases}" for r in reports))
    console.print(table)
