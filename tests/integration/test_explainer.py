"""The real llama.cpp explainer with the shipped GGUF: replies obey the contract (not their wording)."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config import ExplainerSettings
from monitor.explainer.adversarial import ATTACKS, BASE_POSTS, BENIGN_EDITS, is_valid, run_suite
from monitor.explainer.llm import ExplanationCache, LlamaExplainer
from monitor.models import default_gguf_path
from monitor.tasks import load_task

ADR = load_task("druglib_adverse")
SAD = load_task("rmhd27_social_anxiety")
SENTIMENT = load_task("druglib_sentiment")  # three labels: a reject names the right one


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("llm") / "explanations.sqlite"


@pytest.fixture(scope="module")
def explainer(cache_path: Path) -> LlamaExplainer:
    return LlamaExplainer.load(default_gguf_path(), ExplainerSettings(), cache=ExplanationCache(cache_path))


@pytest.mark.parametrize("task", [ADR, SAD, SENTIMENT], ids=lambda t: t.name)
def test_replies_obey_the_contract(explainer: LlamaExplainer, task):
    for post in BASE_POSTS:
        for label in task.labels:
            result = explainer.explain(task, post, label)
            assert is_valid(result, task, post), result
            # Under the grammar every reply parses the first time: no retry, nothing unverified.
            assert result.verdict in ("confirm", "reject") and result.attempts == 1, result
            assert result.prompt_version.startswith(task.name) and result.llm_model.startswith("SmolLM2")


def test_the_shared_prefix_is_evaluated_once_and_restored_across_tasks():
    fresh = LlamaExplainer.load(default_gguf_path(), ExplainerSettings(), cache=None)
    usage = fresh.usage

    def evaluated(task, post):  # noqa: ANN001, ANN202
        before = usage.prompt_tokens
        fresh.explain(task, post, task.labels[0])
        return usage.prompt_tokens - before

    first = evaluated(ADR, BASE_POSTS[0])
    assert first > 400  # rules + two worked examples + the post
    assert evaluated(ADR, BASE_POSTS[1]) < 60  # only the post and the chat template's tail
    assert evaluated(SAD, BASE_POSTS[2]) > 400  # another task: its own prefix, kept as well
    restores = usage.prefix_restores
    assert evaluated(ADR, BASE_POSTS[3]) < 60  # back to the first task: its prefix comes back from memory
    assert usage.prefix_restores == restores + 1


def test_warm_builds_every_prefix_so_the_first_explanations_are_cheap():
    fresh = LlamaExplainer.load(default_gguf_path(), ExplainerSettings(), cache=None)
    assert fresh.warm([ADR, SAD]) == len(ADR.labels) + len(SAD.labels)
    assert fresh.warm([ADR]) == 0  # already kept
    usage = fresh.usage
    for task, label in ((ADR, ADR.labels[1]), (SAD, SAD.labels[0]), (ADR, ADR.labels[0])):
        before = usage.prompt_tokens
        result = fresh.explain(task, BASE_POSTS[0], label)
        assert usage.prompt_tokens - before < 60, (task.name, label)  # the post and the template's tail only
        assert result.verdict in ("confirm", "reject")


def test_a_pool_of_contexts_gives_the_single_context_verdicts_in_parallel(explainer: LlamaExplainer):
    from concurrent.futures import ThreadPoolExecutor

    from monitor.explainer.llm import ExplainerPool

    cache = ExplanationCache(":memory:")  # its own: the single context's answers must not be served
    pool = ExplainerPool.load(default_gguf_path(), ExplainerSettings(n_parallel=2, n_threads=1), cache=cache)
    assert pool.parallel == 2 and pool.model_name == explainer.model_name
    assert pool.warm([ADR]) == 2 * len(ADR.labels)  # each context keeps its own prefixes
    cases = [(BASE_POSTS[i % len(BASE_POSTS)], ADR.labels[i % 2]) for i in range(6)]
    with ThreadPoolExecutor(max_workers=2) as workers:
        results = list(workers.map(lambda case: pool.explain(ADR, *case), cases))
    alone = [explainer.explain(ADR, post, label) for post, label in cases]
    assert [(r.verdict, r.suggested_label, r.evidence) for r in results] == [
        (r.verdict, r.suggested_label, r.evidence) for r in alone]
    assert sum(engine.usage.calls for engine in pool.engines) >= len(cases)
    assert all(engine.usage.calls > 0 for engine in pool.engines)  # both contexts worked
    calls = pool.usage.calls
    assert pool.explain(ADR, *cases[0]).cached and pool.usage.calls == calls  # a hit takes no context


def test_checking_the_grammar_only_when_needed_gives_the_same_replies():
    fast = LlamaExplainer.load(default_gguf_path(), ExplainerSettings(), cache=None)
    full = LlamaExplainer.load(default_gguf_path(), ExplainerSettings(), cache=None)
    full.grammar_every_token = True
    for post in BASE_POSTS[:4]:
        for task in (ADR, SENTIMENT):
            a, b = fast.explain(task, post, task.labels[-1]), full.explain(task, post, task.labels[-1])
            assert a.model_dump(exclude={"latency_s"}) == b.model_dump(exclude={"latency_s"})
    assert fast.usage.completion_tokens == full.usage.completion_tokens
    assert full.usage.grammar_passes == full.usage.completion_tokens
    assert fast.usage.grammar_passes < fast.usage.completion_tokens / 4


def test_cache_serves_repeats_and_survives_a_new_process_object(explainer: LlamaExplainer, cache_path: Path):
    post = "New inhaler makes my heart race for an hour after every dose."
    first = explainer.explain(ADR, post, "severe_adr")
    hits = explainer.cache.hits
    again = explainer.explain(ADR, post, "severe_adr")
    assert again.cached and explainer.cache.hits == hits + 1
    assert again.model_dump(exclude={"cached"}) == first.model_dump(exclude={"cached"})
    other_label = explainer.explain(ADR, post, "no_severe_adr")
    assert not other_label.cached  # the predicted label is part of the key
    fresh = LlamaExplainer.load(default_gguf_path(), ExplainerSettings(), cache=ExplanationCache(cache_path))
    assert fresh.explain(ADR, post, "severe_adr").cached


def test_without_the_grammar_the_retry_path_runs_and_nothing_crashes():
    loose = LlamaExplainer.load(default_gguf_path(), ExplainerSettings(constrained=False), cache=None)
    cases = [(task, post, label) for task in (ADR, SENTIMENT) for post in BASE_POSTS for label in task.labels[:2]]
    results = [loose.explain(*case) for case in cases]
    for (task, post, _), result in zip(cases, results, strict=True):
        assert is_valid(result, task, post)
    retried = [r for r in results if r.attempts == 2]
    assert retried, "an unconstrained small model should break the contract at least once"
    assert all(r.verdict != "unverified" or r.reason for r in retried)


def test_a_prompt_too_long_for_the_context_is_unverified_not_cached_not_a_crash(tmp_path: Path):
    cache = ExplanationCache(tmp_path / "c.sqlite")
    small = LlamaExplainer.load(default_gguf_path(), ExplainerSettings(n_ctx=512), cache=cache)
    result = small.explain(ADR, BASE_POSTS[0], "severe_adr")
    assert result.verdict == "unverified" and "no room" in result.reason and result.attempts == 2
    assert small.explain(ADR, BASE_POSTS[0], "severe_adr").cached is False


def test_adversarial_posts_never_break_the_contract(explainer: LlamaExplainer):
    report = run_suite(explainer.explain, ADR, "severe_adr", posts=BASE_POSTS[:2])
    assert report.cases == 2 * (1 + len(BENIGN_EDITS) + len(ATTACKS))
    assert report.valid == report.cases, report.as_dict()
    # The grammar holds even when the post fights it, and the default context (4096) fits the longest
    # post the prompt keeps (4,000 characters of Latin filler are ~1,570 tokens, plus a ~550-token prefix).
    assert not report.unverified, report.as_dict()


def test_explain_adversarial_command_reports_the_change_rate_per_attack(tmp_path: Path):
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "MONITOR_DATA_DIR": str(tmp_path), "MONITOR_EXPLAINER__N_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "monitor.cli", "explain-adversarial", "smm4h23_task4_sad_diagnosis",
                             "--label", "sad_diagnosis", "--posts", "1", "--json"],
                            capture_output=True, text=True, env=env, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    [report] = json.loads(result.stdout)["reports"]
    assert report["per_attack"] == {name: 1 for name in ATTACKS}
    assert report["valid"] == report["cases"] == 1 + len(BENIGN_EDITS) + len(ATTACKS)
    assert 0.0 <= report["change_rate"] <= 1.0
    assert report["benign"] == len(BENIGN_EDITS) and 0.0 <= report["self_disagreement_rate"] <= 1.0
    assert not (tmp_path / "explanations.sqlite").exists()  # the suite bypasses the cache


def test_the_verdict_is_read_from_calibrated_scores_of_the_options(explainer: LlamaExplainer):
    """P(confirm) and each label's share come from the model's scores of the reply's openings, after
    dividing out its prior on content-free posts; the threshold alone turns them into a verdict."""
    import math

    from monitor.explainer.llm import CONTENT_FREE

    post = BASE_POSTS[0]
    for task in (ADR, SENTIMENT):
        label = task.labels[0]
        scored = explainer.explain(task, post, label, threshold=0.0)  # confirm whatever the scores
        assert scored.verdict == "confirm" and scored.suggested_label == label
        assert set(scored.label_scores) == set(task.labels)
        assert abs(sum(scored.label_scores.values()) - 1.0) < 1e-4
        strict = explainer.explain(task, post, label, threshold=1.01)  # reject whatever the scores
        others = {k: v for k, v in strict.label_scores.items() if k != label}
        assert strict.verdict == "reject" and strict.suggested_label == max(others, key=others.get)
        assert strict.label_scores == scored.label_scores  # the scores do not depend on the threshold
    # Contextual calibration: on the content-free posts themselves, the calibrated log-odds average to 0.
    log_odds = []
    for text in CONTENT_FREE:
        p = explainer.explain(ADR, text, "severe_adr").confirm_score
        log_odds.append(math.log(p / (1 - p)))
    assert abs(sum(log_odds) / len(log_odds)) < 1e-3, log_odds


def test_the_classifiers_evidence_line_is_kept_and_only_the_reason_is_written(explainer: LlamaExplainer):
    from monitor.explainer.prompts import post_lines

    post = "I started the new pills on Monday. By Wednesday I had a rash all over my arms. Otherwise fine."
    lines = post_lines(post)
    for line in range(1, len(lines) + 1):
        result = explainer.explain(ADR, post, "severe_adr", evidence_line=line)
        assert is_valid(result, ADR, post), result
        assert result.evidence_line == line and result.evidence == lines[line - 1]
    # A line the post does not have is not trusted: the model picks one of the post's own.
    result = explainer.explain(ADR, post, "severe_adr", evidence_line=len(lines) + 5)
    assert is_valid(result, ADR, post) and 1 <= result.evidence_line <= len(lines)


def test_replies_decoded_side_by_side_keep_the_verdicts_of_one_post_at_a_time(explainer: LlamaExplainer):
    """sequences=4: prompts are read in sequence 0's own KV stream, so the scores (and the verdicts)
    are exactly those of one post at a time; the replies share decoding steps and obey the contract."""
    from concurrent.futures import ThreadPoolExecutor

    from monitor.explainer.llm import ExplainerPool

    pool = ExplainerPool.load(default_gguf_path(), ExplainerSettings(n_parallel=1, n_threads=1, sequences=4),
                              cache=None)
    assert pool.parallel == 4
    cases = [(BASE_POSTS[i % len(BASE_POSTS)], ADR.labels[i % 2], 1 if i % 3 == 0 else None) for i in range(10)]
    with ThreadPoolExecutor(max_workers=pool.parallel) as workers:
        results = list(workers.map(lambda case: pool.explain(ADR, case[0], case[1], evidence_line=case[2]), cases))
    alone = [explainer.generate(ADR, post, label, evidence_line=line)[0] for post, label, line in cases]
    for (post, _, _), side, single in zip(cases, results, alone, strict=True):
        assert is_valid(side, ADR, post), side
        assert side.label_scores == single.label_scores  # exactly: not within a tolerance
        assert (side.verdict, side.suggested_label) == (single.verdict, single.suggested_label)
    assert [r.evidence_line for r, (_, _, line) in zip(results, cases, strict=True) if line] == [1] * 4
    usage = pool.usage
    assert usage.calls == len(cases)
    assert usage.completion_tokens > 1.5 * usage.steps  # several replies went through each decoding step


def test_side_by_side_a_failing_request_does_not_take_the_others_with_it(monkeypatch):
    """A prompt too long for its stream is unverified while the others beside it are answered; an
    unexpected error reaches every open request, and the context then serves on."""
    from concurrent.futures import ThreadPoolExecutor

    from monitor.explainer.llm import ExplainerPool

    pool = ExplainerPool.load(default_gguf_path(), ExplainerSettings(n_ctx=1024, n_parallel=1, n_threads=1,
                                                                     sequences=3), cache=None)
    long_post = " ".join(["My knee hurt after the new tablets and I could not sleep."] * 60)
    texts = [BASE_POSTS[0], long_post, BASE_POSTS[1]]
    with ThreadPoolExecutor(max_workers=3) as workers:
        results = list(workers.map(lambda text: pool.explain(ADR, text, "severe_adr"), texts))
    assert results[1].verdict == "unverified" and "no room" in results[1].reason and results[1].attempts == 2
    assert is_valid(results[0], ADR, texts[0]) and is_valid(results[2], ADR, texts[2])

    engine = pool.engines[0]
    monkeypatch.setattr(engine, "_step", lambda slots, waiting: (_ for _ in ()).throw(KeyError("boom")))
    with ThreadPoolExecutor(max_workers=2) as workers:
        failures = [workers.submit(pool.explain, ADR, post, "severe_adr") for post in BASE_POSTS[2:4]]
        for future in failures:
            with pytest.raises(KeyError):
                future.result(timeout=120)
    monkeypatch.undo()
    assert is_valid(pool.explain(ADR, BASE_POSTS[4], "severe_adr"), ADR, BASE_POSTS[4])
    pool.close()


def test_weights_auto_times_a_q8_0_copy_once_and_a_copy_is_another_model(tmp_path: Path):
    """weights=auto requantises the shipped Q4_1 GGUF to Q8_0 beside the cache, times both on this CPU,
    remembers the choice (asked again, nothing is timed), and the copy explains under its own name."""
    from monitor.config import Settings
    from monitor.explainer.llm import file_fingerprint
    from monitor.explainer.weights import file_type
    from monitor.runtime import explainer_weights

    source = default_gguf_path()
    folder = tmp_path / "weights"
    auto = Settings(_env_file=None, explainer={"weights": "auto", "weights_cache": folder})
    first = explainer_weights(auto, source)
    assert first.source == "measured" and set(first.seconds) == {"as_configured", "q8_0"}
    copy = folder / f"{source.stem}.{file_fingerprint(source)[:8]}.q8_0.gguf"
    assert file_type(source) == 3
    assert first.path == (copy if first.weights == "q8_0" else source)
    assert copy.is_file() == (first.weights == "q8_0")  # a copy that lost its timing does not stay on disk
    again = explainer_weights(auto, source)
    assert (again.source, again.weights, again.path, again.seconds) == ("cache", first.weights, first.path,
                                                                        first.seconds)
    forced = explainer_weights(Settings(_env_file=None, explainer={"weights": "q8_0", "weights_cache": folder}),
                               source)
    assert forced.path == copy and forced.source == "configured" and file_type(copy) == 7  # Q8_0 from Q4_1
    assert explainer_weights(Settings(_env_file=None, explainer={"weights": "as_configured"}), source).path == source

    q8 = LlamaExplainer.load(copy, ExplainerSettings(), cache=None)
    shipped = LlamaExplainer.load(source, ExplainerSettings(), cache=None)
    assert q8.model_name != shipped.model_name and q8.model_name.startswith(copy.name)
    result = q8.explain(ADR, BASE_POSTS[0], "severe_adr")
    assert is_valid(result, ADR, BASE_POSTS[0]) and result.llm_model == q8.model_name
