"""The llama-cpp-python adapter: one model per process, grammar-constrained, cached, never crashing.

Temperature 0 and a fixed seed; one retry (a little temperature, another seed) when a reply
breaks the contract; after that the result is ``unverified`` with the reason. Results are cached
by (model fingerprint, prompt version, post hash, predicted label), so replays and duplicate posts
do not pay twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from monitor.config import ExplainerSettings
from monitor.errors import ModelError
from monitor.explainer.prompts import (
    MAX_EVIDENCE_CHARS,
    MAX_REASON_CHARS,
    ReplyError,
    build_grammar,
    build_messages,
    parse_reply,
    prompt_version,
)
from monitor.records import Explanation
from monitor.tasks import TaskDefinition

log = logging.getLogger(__name__)

# Four short lines: the fixed words, a label, a clause of the post, a one-line reason (~4 chars/token).
_MAX_TOKENS = 24 + (MAX_EVIDENCE_CHARS + MAX_REASON_CHARS) // 3


def file_fingerprint(path: Path, *, edge: int = 4 << 20) -> str:
    """sha256 over the size and the first and last 4 MiB: cheap for multi-GB GGUFs, and any
    re-quantisation or different model changes it."""
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(edge))
        handle.seek(max(0, path.stat().st_size - edge))
        digest.update(handle.read(edge))
    return digest.hexdigest()[:16]


class ExplanationCache:
    """A small SQLite key-value store of explanations (``:memory:`` for a throw-away one)."""

    def __init__(self, path: Path | str):
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS explanations (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.commit()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(model: str, version: str, text: str, predicted_label: str) -> str:
        post = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        return hashlib.sha256(json.dumps([model, version, post, predicted_label]).encode()).hexdigest()

    def get(self, key: str) -> Explanation | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM explanations WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return Explanation.model_validate_json(row[0]).model_copy(update={"cached": True})

    def put(self, key: str, explanation: Explanation) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO explanations VALUES (?, ?)", (key, explanation.model_dump_json()))
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()


class LlamaExplainer:
    """Asks a local GGUF model whether the classifier's label is right, under the output contract."""

    def __init__(self, llm: Any, model_path: Path, settings: ExplainerSettings, *, cache: ExplanationCache | None):
        self._llm = llm
        self._lock = threading.Lock()  # a llama.cpp context serves one request at a time
        self.settings = settings
        self.cache = cache
        self.model_path = model_path
        self.fingerprint = file_fingerprint(model_path)
        self.model_name = f"{model_path.name}#{self.fingerprint[:8]}"

    @classmethod
    def load(cls, model_path: Path, settings: ExplainerSettings, *, cache: ExplanationCache | None = None) -> LlamaExplainer:
        from llama_cpp import Llama

        if not model_path.is_file():
            raise ModelError(f"GGUF file not found: {model_path}")
        try:
            llm = Llama(model_path=str(model_path), n_ctx=settings.n_ctx, n_threads=settings.n_threads,
                        n_gpu_layers=settings.n_gpu_layers, seed=settings.seed, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"llama.cpp cannot load {model_path}: {exc}") from exc
        return cls(llm, model_path, settings, cache=cache)

    def _generate(self, messages: list[dict[str, str]], grammar_text: str | None, *, retry: bool) -> str:
        from llama_cpp import LlamaGrammar

        grammar = LlamaGrammar.from_string(grammar_text, verbose=False) if grammar_text else None
        with self._lock:
            out = self._llm.create_chat_completion(
                messages=messages, grammar=grammar, max_tokens=_MAX_TOKENS,
                # The retry is the only sampling: at temperature 0 the same prompt gives the same reply.
                temperature=0.3 if retry else 0.0, seed=self.settings.seed + (1 if retry else 0),
            )
        return out["choices"][0]["message"]["content"] or ""

    def explain(self, task: TaskDefinition, text: str, predicted_label: str) -> Explanation:
        """A verdict on ``predicted_label`` for ``text``; ``unverified`` (with the reason) rather than an error."""
        version = prompt_version(task)
        key = ExplanationCache.key(self.fingerprint, version, text, predicted_label)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            return hit
        if predicted_label not in task.labels:
            raise ValueError(f"{predicted_label!r} is not a label of task {task.name}")
        messages = build_messages(task, text, predicted_label)
        grammar = build_grammar(task, text, predicted_label) if self.settings.constrained else None
        started = time.perf_counter()
        reasons = []
        transient = False
        for attempt in (1, 2):
            try:
                reply = self._generate(messages, grammar, retry=attempt > 1)
                parsed = parse_reply(reply, task, text, predicted_label)
            except ReplyError as exc:
                reasons.append(str(exc))
                continue
            except (ValueError, RuntimeError) as exc:  # llama.cpp: context overflow, grammar, decode errors
                reasons.append(f"llama.cpp: {exc}")
                transient = True
                continue
            result = Explanation(verdict=parsed.verdict, predicted_label=predicted_label,
                                 suggested_label=parsed.label, evidence=parsed.evidence, rationale=parsed.reason,
                                 llm_model=self.model_name, prompt_version=version,
                                 latency_s=time.perf_counter() - started, attempts=attempt)
            break
        else:
            result = Explanation(verdict="unverified", predicted_label=predicted_label, reason="; ".join(reasons)[:500],
                                 llm_model=self.model_name, prompt_version=version,
                                 latency_s=time.perf_counter() - started, attempts=2)
            log.info("explanation unverified for task %s: %s", task.name, result.reason)
        if self.cache is not None and not transient:
            self.cache.put(key, result)
        return result
