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
    """Classify one post and have the LLM confirm or reject the label, with a short reason."""
    from monitor.explainer.policy import apply_verdict
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
    result = explainer.explain(definition, text, label)
    mode, why = runtime.models[card.task].mode, runtime.models[card.task].mode_why
    final, decided_by = apply_verdict(label, result.verdict, result.suggested_label, mode)  # type: ignore[arg-type]
    payload = {
        "task": definition.name, "model_version": card.model_version, "label": label, "confidence": confidence,
        "probabilities": dict(zip(classifier.labels, map(float, probs), strict=True)),
        "escalation_threshold": card.escalation_threshold, "below_threshold": confidence < card.escalation_threshold,
        "verdict": result.verdict, "suggested_label": result.suggested_label, "evidence": result.evidence,
        "rationale": result.rationale, "reason": result.reason, "final_label": final, "decided_by": decided_by,
        "mode": mode, "mode_why": why, "llm_model": result.llm_model, "prompt_version": result.prompt_version,
        "latency_s": result.latency_s, "cached": result.cached,
    }
    if as_json:
        typer.echo(json.dumps(payload, ensure_ascii=False))
        return
    colour = {"confirm": "green", "reject": "yellow"}.get(result.verdict, "red")
    body = (f"[bold]{label}[/] (confidence {confidence:.3f}, threshold {card.escalation_threshold:.3f})\n"
            f"verdict: [{colour}]{result.verdict}[/]" + (f" -> {result.suggested_label}" if result.verdict == "reject" else "")
            + (f"\nevidence: \"{result.evidence}\"\nreason: {result.rationale}" if result.evidence else
               f"\nwhy unverified: {result.reason}")
            + f"\nfinal label: [bold]{final}[/] (decided by {decided_by}; mode {mode}: {why})")
    console.print(Panel(body, title=f"{definition.name} · {card.model_version}", subtitle=result.llm_model))


def explain_eval(
    ctx: typer.Context,
    model: Path = typer.Argument(..., help="Trained model folder"),
    data: Path = typer.Argument(..., exists=True, dir_okay=False, help="Labeled data (the training file = its test split)"),
    gguf: Path | None = typer.Option(None, help="GGUF file (default: explainer.model_path or SmolLM2)"),
    verify_signals: bool = typer.Option(False, help="Also escalate every predicted signal label (the ALEX rule)"),
    below_threshold: bool = typer.Option(True, help="Escalate below the model card's confidence threshold"),
    max_share: float = typer.Option(0.10, min=0.0, max=1.0, help="Cap on the share of posts escalated"),
    limit: int | None = typer.Option(None, min=1, help="Use only the first N posts of the split"),
    record: bool = typer.Option(True, help="Record the allowed mode in MODEL/explainer_policy.json"),
    out: Path | None = typer.Option(None, help="Write the full report (JSON) here"),
) -> None:
    """Measure the explainer under a policy: F1 before/after, flips and how many were right, agreement,
    unverified share, explanations/s. Allows `correct` mode only if the task metric does not drop."""
    from monitor.assessment import assess, write_policy
    from monitor.explainer.policy import Policy
    from monitor.model_card import read_card
    from monitor.runtime import Runtime
    from monitor.tasks import load_task
    from monitor.training.recipe import held_out_rows

    settings = settings_of(ctx)
    card = read_card(model)
    task = load_task(card.training.get("task_source", card.task))
    rows, which = held_out_rows(card, data, "test")
    rows = list(rows)[:limit] if limit else list(rows)
    runtime = Runtime.build(settings, ["classify", "explain"], folders=[model], gguf=gguf)
    classifier, explainer = runtime.classifiers[task.name], runtime.explainer
    assert explainer is not None  # the explain role loads it
    policy = Policy(mode="correct", below_threshold=below_threshold, verify_signals=verify_signals, max_share=max_share)
    progress = Progress(TextColumn("explaining"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console)
    with progress:
        job = progress.add_task("explain", total=None)
        report = assess(classifier, explainer, task, [e.text for e in rows], [e.label for e in rows], policy,
                        on_explained=lambda n, total: progress.update(job, completed=n, total=total))
    table = Table("measure", "value", title=f"explain-eval: {task.name} ({which}, {report.posts} posts)")
    for name, value in [
        (f"{report.metric_name} before -> after", f"{report.metric_before:.4f} -> {report.metric_after:.4f}"),
        ("escalated", f"{report.escalated} ({report.escalated / max(report.posts, 1):.1%})"),
        ("verified / unverified", f"{report.verified} / {report.unverified} ({report.unverified_share:.1%} unverified)"),
        ("agreement (confirm share of verified)", f"{report.agreement_rate:.1%}"),
        ("flips (right / wrong)", f"{report.flips} ({report.flips_right} / {report.flips_wrong})"),
        ("share of flips that were right", f"{report.flips_right_share:.1%}"),
        ("LLM label accuracy on escalated", "-" if report.llm_accuracy_on_escalated is None
         else f"{report.llm_accuracy_on_escalated:.1%}"),
        ("explanations/s, mean latency", f"{report.explanations_per_s:.2f}/s, {report.mean_latency_s:.2f} s"),
        ("cache hits", str(report.cache_hits)),
        ("allowed mode", f"[bold]{report.allowed_mode}[/]: {report.why}"),
    ]:
        table.add_row(name, value)
    console.print(table)
    if record:
        console.print(f"recorded in {write_policy(model, report)}")
    if out:
        out.write_text(json.dumps(report.as_dict(), indent=2) + "\n")


def explain_adversarial(
    ctx: typer.Context,
    task: str = typer.Argument(..., help="Task name or TOML"),
    label: list[str] = typer.Option([], help="Predicted label(s) to test (default: every label of the task)"),
    gguf: Path | None = typer.Option(None, help="GGUF file (default: explainer.model_path or SmolLM2)"),
    posts: int | None = typer.Option(None, min=1, help="Use only the first N base posts"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table"),
) -> None:
    """Run the adversarial suite: how often an injection in the post changes the verdict, per attack.

    Every base post is explained as written and with each attack appended (orders, fake JSON, role
    tags, fence escapes, padding, other languages, forged replies); every reply must still obey the
    output contract. The cache is off for this run, so each case is really generated.
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
    table.add_row("valid replies", *(f"{r.valid}/{r.cases}" for r in reports))
    console.print(table)
