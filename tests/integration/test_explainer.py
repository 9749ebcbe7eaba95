"""The real llama.cpp explainer with the shipped GGUF: replies obey the contract (not their wording)."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config import ExplainerSettings
from monitor.explainer.adversarial import ATTACKS, BASE_POSTS, is_valid, run_suite
from monitor.explainer.llm import ExplanationCache, LlamaExplainer
from monitor.models import default_gguf_path
from monitor.tasks import load_task

ADR = load_task("druglib_adverse")
SAD = load_task("rmhd27_social_anxiety")


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("llm") / "explanations.sqlite"


@pytest.fixture(scope="module")
def explainer(cache_path: Path) -> LlamaExplainer:
    return LlamaExplainer.load(default_gguf_path(), ExplainerSettings(n_threads=2), cache=ExplanationCache(cache_path))


@pytest.mark.parametrize("task", [ADR, SAD], ids=lambda t: t.name)
def test_replies_obey_the_contract(explainer: LlamaExplainer, task):
    for post in BASE_POSTS:
        for label in task.labels:
            result = explainer.explain(task, post, label)
            assert is_valid(result, task, post), result
            assert result.verdict in ("confirm", "reject", "unverified") and 1 <= result.attempts <= 2
            assert result.prompt_version.startswith(task.name) and result.llm_model.startswith("SmolLM2")


def test_cache_serves_repeats_and_survives_a_new_process_object(explainer: LlamaExplainer, cache_path: Path):
    post = "New inhaler makes my heart race for an hour after every dose."
    first = explainer.explain(ADR, post, "severe_adr")
    hits = explainer.cache.hits
    again = explainer.explain(ADR, post, "severe_adr")
    assert again.cached and explainer.cache.hits == hits + 1
    assert again.model_dump(exclude={"cached"}) == first.model_dump(exclude={"cached"})
    other_label = explainer.explain(ADR, post, "no_severe_adr")
    assert not other_label.cached  # the predicted label is part of the key
    fresh = LlamaExplainer.load(default_gguf_path(), ExplainerSettings(n_threads=2),
                                cache=ExplanationCache(cache_path))
    assert fresh.explain(ADR, post, "severe_adr").cached


def test_without_the_grammar_the_retry_path_runs_and_nothing_crashes():
    loose = LlamaExplainer.load(default_gguf_path(), ExplainerSettings(n_threads=2, constrained=False), cache=None)
    results = [loose.explain(ADR, post, "no_severe_adr") for post in BASE_POSTS[:4]]
    for post, result in zip(BASE_POSTS, results):
        assert is_valid(result, ADR, post)
    retried = [r for r in results if r.attempts == 2]
    assert retried, "an unconstrained small model should break the contract at least once"
    assert all(r.verdict != "unverified" or r.reason for r in retried)


def test_adversarial_posts_never_break_the_contract(explainer: LlamaExplainer):
    report = run_suite(explainer.explain, ADR, "severe_adr", posts=BASE_POSTS[:2])
    assert report.cases == 2 * (1 + len(ATTACKS))
    assert report.valid == report.cases, report.as_dict()
