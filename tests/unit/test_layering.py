"""Which way imports go (STYLE.md), as import-linter contracts in pyproject.toml, and what a role loads."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

from importlinter.cli import lint_imports

from monitor.model_card import CARD_FILE, ModelCard
from monitor.tasks import load_task

ROOT = Path(__file__).resolve().parents[2]


def test_the_import_contracts_hold(monkeypatch):
    monkeypatch.chdir(ROOT)
    # The report names each broken contract and the chain of imports that breaks it.
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def _card_only_model(folder: Path) -> Path:
    """A model folder with a card and no weights: enough for every role but classify."""
    task = load_task("druglib_adverse")
    card = ModelCard(model_version="druglib_adverse-test", task=task.name, labels=list(task.labels),
                     signal_labels=list(task.signal_labels), metric=task.metric, base_model="none", max_length=64,
                     created_at=datetime.now(UTC))
    folder.mkdir()
    (folder / CARD_FILE).write_text(json.dumps(card.model_dump(mode="json")))
    return folder


def test_a_persist_runtime_never_imports_torch_or_the_llm(tmp_path):
    model = _card_only_model(tmp_path / "model")
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        import stream_jobs.app, stream_jobs.agents.persist
        from monitor.config import DatabaseSettings, Settings
        from monitor.storage import migrations
        from monitor.runtime import Runtime
        db = DatabaseSettings(url="sqlite:///{tmp_path / 'p.db'}")
        migrations.upgrade(db)
        settings = Settings(database=db, data_dir=Path({str(tmp_path / 'data')!r}),
                            classifier={{"models": [{str(model)!r}]}})
        runtime = Runtime.build(settings, ["persist"])
        print(json.dumps({{"loaded": sorted(m for m in ("torch", "transformers", "llama_cpp") if m in sys.modules),
                          "signal_labels": {{k: sorted(v) for k, v in runtime.signal_labels().items()}},
                          "classifiers": len(runtime.classifiers), "factory": runtime.factory is not None}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"loaded": [], "signal_labels": {"druglib_adverse": ["severe_adr"]}, "classifiers": 0,
                      "factory": True}


def test_a_classify_runtime_serving_a_lexical_model_never_imports_torch(tmp_path):
    """A folder whose lexical model won on validation classifies without torch in the process."""
    sys.path.insert(0, str(ROOT / "tests" / "unit"))
    from test_lexical import _lexical_folder

    model = _lexical_folder(tmp_path / "model")
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from monitor.config import Settings
        from monitor.explainer.policy import Policy
        from monitor.pipeline import classify_batch
        from monitor.records import Post
        from monitor.runtime import Runtime
        settings = Settings(data_dir=Path({str(tmp_path / 'data')!r}), classifier={{"models": [{str(model)!r}]}})
        runtime = Runtime.build(settings, ["classify"])
        posts = [Post(id=str(i), source="t", text=t, created_at="2026-01-01T00:00:00Z") for i, t in enumerate(["terrible rash", "works well"])]
        cases = classify_batch(posts, runtime.task_models, runtime.classifiers, runtime.policy)
        print(json.dumps({{"loaded": sorted(m for m in ("torch", "transformers", "llama_cpp") if m in sys.modules),
                          "labels": [c.prediction.label for c in cases]}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"loaded": [], "labels": ["adr", "none"]}
