"""Stored posts with predictions, explanations and signals, in the migrated SQLite database of
``tests/unit/conftest.py``'s ``factory``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from monitor.records import Post, Prediction
from monitor.storage import repository
from monitor.storage.session import transaction

T0 = datetime(2030, 1, 1, tzinfo=UTC)
TASK = "druglib_adverse"


def _explanation(post_id: int, verdict: str, *, run: str = "live", llm: str = "llm.gguf", at: datetime = T0,
                final: str = "severe_adr", predicted: str = "severe_adr") -> dict:
    return {"post_id": post_id, "task": TASK, "model_version": "m1", "run": run, "llm_model": llm,
            "prompt_version": "v1", "predicted_label": predicted, "verdict": verdict,
            "suggested_label": final if verdict == "reject" else None, "final_label": final,
            "rationale": f"{verdict} by {llm}", "evidence": "legs hurt", "created_at": at}


def _signal(post_id: int, *, run: str = "live", version: str = "m1", confidence: float = 0.9,
           at: datetime = T0, task: str = TASK) -> dict:
    return {"post_id": post_id, "task": task, "model_version": version, "run": run, "label": "severe_adr",
            "confidence": confidence, "decided_by": "classifier", "post_created_at": at}


@pytest.fixture
def explanation():
    """An ``explanations`` row of TASK (confirm/reject/... by ``llm``), as ``repository`` stores it."""
    return _explanation


@pytest.fixture
def signal():
    """A ``signals`` row, as ``repository`` stores it."""
    return _signal


@pytest.fixture
def stored(factory) -> dict[str, int]:
    """Three posts of source ``s`` (one an hour) and one of ``other``; their database ids by source id."""
    posts = [Post(id=f"p{i}", text=f"my legs hurt {i}", created_at=T0 + timedelta(hours=i), source="s",
                  geo={"country": "GB"} if i == 0 else None) for i in range(3)]
    posts.append(Post(id="q", text="unrelated", created_at=T0, source="other"))
    with transaction(factory) as session:
        ids = repository.upsert_posts(session, posts, author_key=b"k" * 32)
        for run, labels in (("live", ("severe_adr", "no_severe_adr", "severe_adr")),
                            ("candidate", ("severe_adr", "severe_adr", "severe_adr"))):
            predictions = [Prediction(post_id=p.id, source=p.source, task=TASK, model_version="m1", label=label,
                                      probabilities={label: 0.7}, confidence=0.7, escalated=i == 1)
                           for i, (p, label) in enumerate(zip(posts, labels, strict=False))]
            repository.upsert_predictions(session, predictions, ids, run=run)
    return {source_id: pk for (_, source_id), pk in ids.items()}
