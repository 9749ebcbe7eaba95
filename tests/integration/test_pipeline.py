"""The pipeline in one process (what `monitor classify` runs): exact, idempotent rows on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from monitor.config import ClassifierSettings, DatabaseSettings, ExplainerSettings, Settings
from monitor.explainer.llm import ExplanationCache, LlamaExplainer
from monitor.explainer.policy import ExplanationBudget, Policy
from monitor.models import default_gguf_path
from monitor.pipeline import process_batch
from monitor.records import Post
from monitor.runtime import Runtime
from monitor.storage import migrations
from monitor.storage.session import transaction
from monitor.storage.tables import Explanation, Prediction, Signal
from monitor.storage.tables import Post as PostRow
from monitor.tasks import load_task
from monitor.corpus import load_examples

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
KEY = b"pipeline-test"


@pytest.fixture(scope="module")
def posts() -> list[Post]:
    examples = load_examples(SHARED / "rmhd27" / "rmhd27_dev.csv", load_task("rmhd27_social_anxiety")).examples
    t0 = datetime(2019, 6, 1, tzinfo=UTC)
    return [Post(id=e.id, text=e.text, created_at=t0 + timedelta(minutes=i), source="rmhd27",
                 labels={"rmhd27_social_anxiety": e.label}) for i, e in enumerate(examples[:120])]


@pytest.fixture(scope="module")
def explainer(tmp_path_factory) -> LlamaExplainer:
    cache = ExplanationCache(tmp_path_factory.mktemp("cache") / "e.sqlite")
    return LlamaExplainer.load(default_gguf_path(), ExplainerSettings(n_threads=2), cache=cache)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path) -> DatabaseSettings:
    db = (DatabaseSettings(url=f"sqlite:///{tmp_path / 'p.db'}") if request.param == "sqlite"
          else request.getfixturevalue("postgres_db"))
    migrations.downgrade(db, "base")
    migrations.upgrade(db)
    return db


def _runtime(model: Path, explainer, database: DatabaseSettings, data_dir: Path) -> Runtime:
    settings = Settings(classifier=ClassifierSettings(device="cpu"), database=database, data_dir=data_dir)
    runtime = Runtime.build(settings, ["classify", "explain", "persist"], folders=[model], explainer=explainer)
    runtime.author_key = KEY
    return runtime


def _threshold(runtime: Runtime, posts: list[Post], share: float) -> float:
    """A threshold below which ``share`` of these posts' confidences fall (escalation is per post)."""
    (classifier,) = runtime.classifiers.values()
    confidences = sorted(float(p.max()) for p in classifier.predict_proba([post.text for post in posts]))
    return confidences[int(share * len(confidences))]


def _count(factory, table) -> int:
    with transaction(factory) as session:
        return session.scalar(select(func.count()).select_from(table))


def test_every_post_gets_one_row_per_table_and_a_rerun_adds_none(tiny_model, explainer, posts, database, tmp_path):
    runtime = _runtime(tiny_model, explainer, database, tmp_path)
    factory, runtime.budget = runtime.factory, None
    threshold = _threshold(runtime, posts, 0.1)
    runtime.policy = Policy(threshold=threshold)  # each post below it is escalated, whatever its batch
    total_signals = total_escalated = 0
    for start in range(0, len(posts), 40):
        result = process_batch(posts[start:start + 40], runtime)
        assert result.posts == 40 and result.predictions == 40
        assert result.escalated == sum(d.case.prediction.confidence < threshold for d in result.decisions)
        total_signals += result.signals
        total_escalated += result.escalated
    assert _count(factory, PostRow) == 120
    assert _count(factory, Prediction) == 120
    assert _count(factory, Explanation) == total_escalated > 0
    assert _count(factory, Signal) == total_signals
    # Each stored explanation carries the classifier's evidence (occlusion scores, one per line, the
    # line with the largest drop) and the LLM's label scores; no explain-eval measured this LLM, so
    # its verdicts are withheld: the rationale stands, no verdict is stored.
    with transaction(factory) as session:
        rows = session.scalars(select(Explanation)).all()
        for row in rows:
            assert row.verdict in ("withheld", "unverified"), row.verdict
            assert row.evidence_scores  # stored for every escalated case the classifier attributed
            if row.verdict == "withheld":
                assert row.evidence_line == 1 + max(range(len(row.evidence_scores)), key=row.evidence_scores.__getitem__)
                assert abs(sum(row.label_scores.values()) - 1) < 1e-4 and row.rationale
                assert row.unsupported is not None and row.suggested_label is None

    # At-least-once redelivery of the same batches (the explainer answers from its cache): nothing new.
    for start in range(0, len(posts), 40):
        again = process_batch(posts[start:start + 40], runtime)
        assert again.rows["posts_seen"] == 40
        assert (again.rows["predictions"], again.rows["explanations"], again.rows["signals"]) == (0, 0, 0)
        assert all(d.explanation.cached for d in again.decisions if d.explanation)
    assert _count(factory, Prediction) == 120
    factory.kw["bind"].dispose()


def test_over_budget_cases_keep_their_classifier_label(tiny_model, explainer, posts, tmp_path):
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'b.db'}")
    migrations.upgrade(db)
    runtime = _runtime(tiny_model, explainer, db, tmp_path)
    factory = runtime.factory
    frozen = [0.0]
    runtime.budget = ExplanationBudget(0.001, burst=1, clock=lambda: frozen[0])  # one explanation, then none
    runtime.policy = Policy(threshold=_threshold(runtime, posts[:60], 0.1))
    result = process_batch(posts[:60], runtime)
    assert result.escalated == 6 and result.over_budget == 5
    over = [d for d in result.decisions if d.explanation and d.explanation.verdict == "over_budget"]
    assert all(d.final_label == d.case.prediction.label and d.decided_by == "classifier" for d in over)
    with transaction(factory) as session:
        verdicts = session.scalars(select(Explanation.verdict)).all()
    assert sorted(verdicts).count("over_budget") == 5
    factory.kw["bind"].dispose()
