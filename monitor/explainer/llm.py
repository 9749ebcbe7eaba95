"""The llama-cpp-python adapter: one model per process, grammar-constrained, cached, never crashing.

Temperature 0 and a fixed seed; one retry (a little temperature, another seed) when a reply
breaks the contract; after that the result is ``unverified`` with the reason. Results are cached
by (model fingerprint, prompt version, post hash, predicted label), so replays and duplicate posts
do not pay twice.

Generation is our own short loop over llama.cpp's context rather than ``create_chat_completion``,
for three measured reasons (tests/benchmarks/bench_explainer.py):
- the grammar is consulted only when the model's own choice breaks it (about one token in
  fifteen): llama.cpp's grammar sampler otherwise tests all 49,152 vocabulary entries at every
  token, ~7 ms a token on this 2-core box against ~14 ms for SmolLM2-135M's forward pass. At
  temperature 0 the reply is the same token for token.
- the prompt prefix (rules, worked examples, the predicted label) is evaluated once per (task,
  label) and its KV state kept, so alternating tasks or labels does not re-read ~470 tokens.
- it stops as soon as the reply is whole (the reason's first sentence end), so the final token is
  never fed back to the model for nothing.
- it can decode several replies side by side (``sequences``; continuous batching): a step reads the
  weights once for all of them. Each prompt is still read alone in sequence 0's own KV stream, so its
  verdict scores are bit for bit those of one post at a time (a shared, unified KV cache changed them).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monitor.config import ExplainerSettings
from monitor.errors import ModelError
from monitor.explainer.prompts import (
    MAX_REASON_CHARS,
    REPLY_END,
    ReplyError,
    build_grammar,
    build_messages,
    parse_reply,
    post_lines,
    prompt_version,
    rest_grammar,
    user_body,
    user_header,
    verdict_options,
)
from monitor.records import Explanation
from monitor.tasks import TaskDefinition

log = logging.getLogger(__name__)

# The one-line reply: verdict, maybe a label, a line number, a reason (at worst one token a character).
MAX_TOKENS = 48 + MAX_REASON_CHARS
# Replies are about 25 tokens; below this much room a long post gets `unverified` instead of a cut reply.
MIN_ROOM = 64
#: KV states of prompt prefixes kept in memory (about 11 MB each for SmolLM2-135M's ~470 tokens): one
#: per (task, label) of the four shipped data tasks (12) with room to spare, so none is rebuilt (a
#: rebuilt prefix may differ in the last digits, and with it the scores the verdict is read from).
PREFIX_STATES = 16
_RETRY_TEMPERATURE, _RETRY_TOP_K = 0.3, 40
#: Posts with no content: the model's scores of the verdict options on these are its prior for a
#: (task, predicted label), divided out of every post's scores (contextual calibration, Zhao et al.
#: 2021, "Calibrate Before Use"). A model that rejects everything alike then has no say.
CONTENT_FREE = ("N/A", "", "[removed]")
_SENTINEL = "\x00POST\x00"
_END_BYTES = tuple(end.encode() for end in REPLY_END)
# For a GGUF without a chat template: ChatML, which most small instruct models use.
_CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
           "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


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
    def key(model: str, version: str, text: str, predicted_label: str, *, evidence_line: int | None = None,
            threshold: float | None = None) -> str:
        post = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        asked = [model, version, post, predicted_label]
        if evidence_line is not None or threshold is not None:  # keys of explanations asked without them stay valid
            asked += [evidence_line, None if threshold is None else round(threshold, 6)]
        return hashlib.sha256(json.dumps(asked).encode()).hexdigest()

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


@dataclass
class Usage:
    """What the model was asked to do, summed over calls (prompt tokens evaluated vs. reused from the KV cache)."""

    calls: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0
    completion_tokens: int = 0
    grammar_passes: int = 0  # tokens where the model's own choice broke the grammar
    prefix_restores: int = 0
    steps: int = 0  # llama.cpp decodes of replies (several side by side count once)


@dataclass(frozen=True)
class Scored:
    """The verdict read from scores: P(confirm) after contextual calibration, and the label asserted."""

    p_confirm: float
    label: str
    probabilities: dict[str, float]

    def rounded(self) -> dict[str, float]:
        return {label: round(p, 6) for label, p in self.probabilities.items()}

    @classmethod
    def of(cls, raw: dict[str, float], prior: dict[str, float], predicted_label: str, threshold: float) -> Scored:
        """Each option's probability divided by its content-free prior, renormalised; confirm when the
        predicted label's share reaches ``threshold``, else the best other label."""
        labels = list(raw)
        z = np.array([raw[label] - prior[label] for label in labels])
        q = np.exp(z - z.max())
        q /= q.sum()
        probabilities = {label: float(q[i]) for i, label in enumerate(labels)}
        p_confirm = probabilities[predicted_label]
        if p_confirm >= threshold:
            return cls(p_confirm, predicted_label, probabilities)
        others = [(p, label) for label, p in probabilities.items() if label != predicted_label]
        return cls(p_confirm, max(others)[1], probabilities)


@dataclass(eq=False)
class _Request:
    """One explanation asked of a context: what is asked, its attempts so far, and where the answer goes
    (``(explanation, transient)``)."""

    task: TaskDefinition
    text: str
    label: str
    evidence_line: int | None
    threshold: float
    future: Future = field(default_factory=Future)
    attempt: int = 1
    reasons: list[str] = field(default_factory=list)
    transient: bool = False
    started: float = field(default_factory=time.perf_counter)


@dataclass(eq=False)
class _Slot:
    """A reply being decoded in its own llama.cpp sequence, after its verdict was read from scores."""

    seq: int
    request: _Request
    scored: Scored
    forced: str
    pending: list[int]  # tokens to feed at the next step, from ``position`` on
    position: int
    limit: int  # tokens the reason may take
    grammar: Any
    rng: np.random.Generator | None
    out: list[int] = field(default_factory=list)


def reads_scores(settings: ExplainerSettings) -> bool:
    """Whether the verdict is read from scores (the default), not decoded."""
    return settings.constrained and settings.verdict_from == "scores"


def side_by_side(settings: ExplainerSettings) -> int:
    """Replies a context decodes side by side: ``sequences`` for verdicts read from scores, else one."""
    return settings.sequences if reads_scores(settings) else 1


def context_threads(settings: ExplainerSettings) -> int:
    """Threads per llama.cpp context of a pool: the configured count, else the cores shared out among
    its ``n_parallel`` contexts (at least one each)."""
    return settings.n_threads or max(1, (os.cpu_count() or 2) // settings.n_parallel)


def _with_streams(llm: Any, sequences: int) -> None:
    """Give ``llm`` a context of ``sequences`` sequences, each in its own KV stream of ``llm``'s n_ctx
    cells (llama-cpp-python's ``Llama`` makes a one-sequence context); the weights are not loaded again.

    A sequence's logits then depend on its own cells only: sequence 0 reads every prompt exactly as a
    one-sequence context would (measured: identical logits), whatever the others hold. A unified cache
    would not do: with other sequences' cells in it, the same prompt's logits differed by up to 0.5."""
    from llama_cpp import _internals

    params = type(llm.context_params).from_buffer_copy(llm.context_params)
    params.n_seq_max, params.kv_unified, params.n_ctx = sequences, False, llm.context_params.n_ctx * sequences
    single = llm._ctx
    llm._ctx = llm._stack.enter_context(contextlib.closing(
        _internals.LlamaContext(model=llm._model, params=params, verbose=False)))
    single.close()


class LlamaExplainer:
    """Asks a local GGUF model whether the classifier's label is right, under the output contract."""

    def __init__(self, llm: Any, model_path: Path, settings: ExplainerSettings, *, cache: ExplanationCache | None):
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._llm = llm
        self._lib = llama_cpp
        self._lock = threading.Lock()  # a llama.cpp context serves one request at a time
        self.settings = settings
        self.cache = cache
        self.model_path = model_path
        self.fingerprint = file_fingerprint(model_path)
        # Verdicts decoded greedily are another explainer than verdicts read from scores: their grants,
        # measurements and cached replies are kept apart by name.
        decoded = "" if settings.verdict_from == "scores" else "/decoded"
        self.model_name = f"{model_path.name}#{self.fingerprint[:8]}{decoded}"
        self.usage = Usage()
        #: Replies decoded side by side (verdicts from scores only; decoded verdicts go one at a time).
        self.sequences = side_by_side(settings)
        self._n_ctx = settings.n_ctx  # per sequence
        self._capacity = llm.n_batch  # >= settings.sequences: a step feeds one token per sequence
        self._batch = llama_cpp.llama_batch_init(self._capacity, 0, 1)
        weakref.finalize(self, llama_cpp.llama_batch_free, self._batch)
        #: Apply the grammar to the whole vocabulary at every token, as llama.cpp's sampler does: slower,
        #: and at temperature 0 the same reply (the integration tests check that).
        self.grammar_every_token = False
        self._vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self._n_vocab = llm.n_vocab()
        self._candidates = (llama_cpp.llama_token_data * self._n_vocab)()
        self._candidates_np = np.ctypeslib.as_array(self._candidates)
        self._candidates_np["id"] = np.arange(self._n_vocab)
        self._one = (llama_cpp.llama_token_data * 1)()
        eos, bos = llm.token_eos(), llm.token_bos()
        self._format = Jinja2ChatFormatter(
            template=llm.metadata.get("tokenizer.chat_template") or _CHATML,
            eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
            bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
        )
        self._prefixes: dict[tuple[str, str], tuple[list[int], str]] = {}
        self._states: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        #: Contextual calibration: log-probabilities of each verdict option on content-free posts,
        #: per (prompt version, predicted label).
        self._priors: dict[tuple[str, str], dict[str, float]] = {}

    @classmethod
    def load(cls, model_path: Path, settings: ExplainerSettings, *,
             cache: ExplanationCache | None = None) -> LlamaExplainer:
        from llama_cpp import Llama

        if not model_path.is_file():
            raise ModelError(f"GGUF file not found: {model_path}")
        # The same thread count for the prompt as for generation: llama-cpp-python's default for the
        # prompt is every core, and with another busy process on a 2-core box its spinning threads made
        # a 30-token prompt take seconds instead of 0.3 s (measured).
        threads = settings.n_threads or max(1, (os.cpu_count() or 2) // 2)
        try:
            llm = Llama(model_path=str(model_path), n_ctx=settings.n_ctx, n_threads=threads, n_threads_batch=threads,
                        n_gpu_layers=settings.n_gpu_layers, seed=settings.seed, verbose=False)
            if side_by_side(settings) > 1:
                _with_streams(llm, side_by_side(settings) + 1)  # 0 reads prompts, 1..N decode replies
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"llama.cpp cannot load {model_path}: {exc}") from exc
        return cls(llm, model_path, settings, cache=cache)

    #: Called directly, a context answers one call at a time (``ExplainerPool`` runs several contexts,
    #: and feeds each up to ``sequences`` requests side by side).
    parallel = 1

    @property
    def scores_verdicts(self) -> bool:
        """Whether the verdict is read from scores (the default), not decoded."""
        return reads_scores(self.settings)

    @property
    def cache_hits(self) -> int:
        return self.cache.hits if self.cache is not None else 0

    # -- the prompt as tokens: a cached (task, label) prefix, then the post ----------------------

    def _prompt_tokens(self, task: TaskDefinition, text: str, predicted_label: str) -> tuple[int, list[int]]:
        """(length of the shared prefix, all prompt tokens); the prefix is tokenised once per (task, label)."""
        key = (prompt_version(task), predicted_label)
        if key not in self._prefixes:
            messages = build_messages(task, "", predicted_label)
            messages[-1]["content"] = user_header(predicted_label) + _SENTINEL
            head, tail = self._format(messages=messages).prompt.split(_SENTINEL)
            self._prefixes[key] = (self._llm.tokenize(head.encode(), add_bos=True, special=True), tail)
        prefix, tail = self._prefixes[key]
        # The post is tokenised without special tokens: a marker the sanitiser missed stays plain text.
        body = self._llm.tokenize(user_body(text).encode(), add_bos=False, special=False)
        return len(prefix), prefix + body + self._llm.tokenize(tail.encode(), add_bos=False, special=True)

    def _load_prefix(self, key: tuple[str, str], prefix: list[int]) -> int:
        """Put the prefix's kept KV state back; returns how many prompt tokens are now in the cache."""
        state = self._states[key]
        lib, ctx = self._lib, self._llm.ctx
        lib.llama_memory_seq_rm(lib.llama_get_memory(ctx), 0, -1, -1)
        buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if lib.llama_state_seq_set_data(ctx, buffer, len(state), 0) != len(state):
            self._states.pop(key)
            lib.llama_memory_seq_rm(lib.llama_get_memory(ctx), 0, -1, -1)
            self._llm.n_tokens = 0
            return 0
        self._states.move_to_end(key)
        self._llm.input_ids[: len(prefix)] = prefix
        self._llm.n_tokens = len(prefix)
        self.usage.prefix_restores += 1
        return len(prefix)

    def _keep_prefix(self, key: tuple[str, str]) -> None:
        lib, ctx = self._lib, self._llm.ctx
        size = lib.llama_state_seq_get_size(ctx, 0)
        buffer = (ctypes.c_uint8 * size)()
        if lib.llama_state_seq_get_data(ctx, buffer, size, 0) == size:
            self._states[key] = bytes(buffer)
            while len(self._states) > PREFIX_STATES:
                self._states.popitem(last=False)

    def _feed_prompt(self, key: tuple[str, str], n_prefix: int, tokens: list[int]) -> None:
        """Evaluate only what the KV cache lacks: reuse the common prefix, else restore or build it.

        The post is always evaluated whole, from the end of the prefix, even when the cache holds more
        of it: llama.cpp's logits differ in the last digits with how the tokens were split into
        batches, and the verdict is read from them, so the same question always gets the same scores."""
        llm = self._llm
        cached = np.asarray(llm.input_ids[: min(llm.n_tokens, len(tokens), n_prefix)])
        differ = np.flatnonzero(cached != np.asarray(tokens[: len(cached)], dtype=cached.dtype))
        common = int(differ[0]) if differ.size else len(cached)
        if common < n_prefix and key in self._states:
            common = self._load_prefix(key, tokens[:n_prefix])
        keep = min(common, len(tokens) - 1)  # at least one token is evaluated, for fresh logits
        self.usage.reused_tokens += keep
        self.usage.prompt_tokens += len(tokens) - keep
        llm.n_tokens = keep  # _eval drops sequence 0's cells from here on
        if keep < n_prefix:
            self._eval(tokens[keep:n_prefix])
            self._keep_prefix(key)
            keep = n_prefix
        self._eval(tokens[keep:])

    # -- scoring the verdict options -------------------------------------------------------------

    def _next_logprobs(self) -> np.ndarray:
        pointer = self._lib.llama_get_logits_ith(self._llm.ctx, -1)
        if not pointer:
            raise RuntimeError("llama.cpp returned no logits")
        logits = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,)).astype(np.float64)
        top = logits.max()
        return logits - (top + np.log(np.exp(logits - top).sum()))

    def _score(self, options: dict[str, list[int]], base: int) -> dict[str, float]:
        """Log-probability of each option's tokens from position ``base`` (where the KV cache ends and
        the next token's logits are fresh), up to where the options part: one forward pass for the
        first tokens, and one more token only where two options share their first tokens. The
        position is left at ``base`` (the caller evaluates from there)."""
        logp = self._next_logprobs()
        groups: dict[int, dict[str, list[int]]] = {}
        for name, tokens in options.items():
            groups.setdefault(tokens[0], {})[name] = tokens[1:]
        scores: dict[str, float] = {}
        for token, rest in groups.items():
            longer = {name: tokens for name, tokens in rest.items() if tokens}
            for name in rest:
                scores[name] = float(logp[token])
            if len(longer) > 1:  # they part later: score what follows the shared token
                self._llm.n_tokens = base
                self._eval([token])
                for name, value in self._score(longer, base + 1).items():
                    scores[name] += value
        self._llm.n_tokens = base
        return scores

    def _option_tokens(self, task: TaskDefinition, predicted_label: str) -> dict[str, list[int]]:
        return {label: self._llm.tokenize(opening.encode(), add_bos=False, special=False)
                for label, opening in verdict_options(task, predicted_label).items()}

    def _read_prompt(self, task: TaskDefinition, text: str, predicted_label: str) -> int:
        """Put the prompt in the KV cache (``_feed_prompt``); returns where it ends. A prompt that leaves
        less than ``MIN_ROOM`` tokens for the reply is a ``ValueError`` (an ``unverified`` result)."""
        n_prefix, tokens = self._prompt_tokens(task, text, predicted_label)
        if self._n_ctx - len(tokens) < MIN_ROOM:
            raise ValueError(f"a prompt of {len(tokens)} tokens leaves no room for the reply "
                             f"in n_ctx={self._n_ctx}")
        self._feed_prompt((prompt_version(task), predicted_label), n_prefix, tokens)
        return len(tokens)

    def _scores_of(self, task: TaskDefinition, text: str, predicted_label: str) -> tuple[dict[str, float], int]:
        """Each label's verdict-option log-probability for ``text``, and where the prompt ends."""
        end = self._read_prompt(task, text, predicted_label)
        return self._score(self._option_tokens(task, predicted_label), end), end

    def _prior(self, task: TaskDefinition, predicted_label: str) -> dict[str, float]:
        """The mean log-probability of each verdict option over the content-free posts (computed once)."""
        key = (prompt_version(task), predicted_label)
        if key not in self._priors:
            runs = [self._scores_of(task, text, predicted_label)[0] for text in CONTENT_FREE]
            self._priors[key] = {label: float(np.mean([run[label] for run in runs])) for label in runs[0]}
        return self._priors[key]

    # -- decoding ---------------------------------------------------------------------------------

    def _allows(self, grammar: Any, token: int) -> bool:
        one = self._one[0]
        one.id, one.logit, one.p = token, 0.0, 0.0
        array = self._lib.llama_token_data_array(data=self._one, size=1, selected=-1, sorted=False)
        self._lib.llama_sampler_apply(grammar, ctypes.byref(array))
        return bool(np.isfinite(one.logit))

    def _mask(self, grammar: Any, logits: np.ndarray) -> np.ndarray:
        candidates = self._candidates_np
        candidates["logit"] = logits
        array = self._lib.llama_token_data_array(data=self._candidates, size=self._n_vocab, selected=-1, sorted=False)
        self._lib.llama_sampler_apply(grammar, ctypes.byref(array))
        masked = candidates["logit"].copy()
        if not np.isfinite(masked).any():
            raise RuntimeError("the grammar allows no next token")
        return masked

    @staticmethod
    def _pick(logits: np.ndarray, rng: np.random.Generator | None) -> int:
        if rng is None:
            return int(np.argmax(logits))
        top = np.argpartition(logits, -_RETRY_TOP_K)[-_RETRY_TOP_K:]
        top = top[np.isfinite(logits[top])]
        weights = np.exp((logits[top] - logits[top].max()) / _RETRY_TEMPERATURE)
        return int(rng.choice(top, p=weights / weights.sum()))

    def _decode(self, grammar_text: str | None, *, max_tokens: int, retry: bool) -> str:
        """Greedy (or, on retry, sampled) tokens until the reply's end (prompts.REPLY_END); the grammar
        is applied to the whole vocabulary only when the model's first choice breaks it."""
        lib, llm = self._lib, self._llm
        rng = np.random.default_rng(self.settings.seed + 1) if retry else None
        grammar = None
        if grammar_text is not None:
            grammar = lib.llama_sampler_init_grammar(self._vocab, grammar_text.encode(), b"root")
            if not grammar:
                raise ValueError("llama.cpp rejected the output grammar")
        out: list[int] = []
        try:
            for _ in range(max_tokens):
                pointer = lib.llama_get_logits_ith(llm.ctx, -1)
                if not pointer:
                    raise RuntimeError("llama.cpp returned no logits")
                logits = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))
                token = self._pick(logits, rng)
                if grammar is not None and (self.grammar_every_token or not self._allows(grammar, token)):
                    self.usage.grammar_passes += 1
                    token = self._pick(self._mask(grammar, logits), rng)
                if lib.llama_vocab_is_eog(self._vocab, token):
                    break
                if grammar is not None:
                    lib.llama_sampler_accept(grammar, token)
                out.append(token)
                piece = llm.detokenize([token])
                if any(end in piece for end in _END_BYTES):
                    break  # the reply is whole: the last token is never fed back for nothing
                self._eval([token])
        finally:
            if grammar is not None:
                lib.llama_sampler_free(grammar)
            self.usage.completion_tokens += len(out)
        return llm.detokenize(out).decode("utf-8", errors="replace")

    def _generate(self, task: TaskDefinition, text: str, predicted_label: str, grammar_text: str | None,
                  *, retry: bool) -> str:
        end = self._read_prompt(task, text, predicted_label)
        self.usage.calls += 1
        return self._decode(grammar_text, max_tokens=min(MAX_TOKENS, self._n_ctx - end), retry=retry)

    # -- replies decoded side by side (verdicts from scores) --------------------------------------

    def _fill(self, entries: Sequence[tuple[int, Sequence[int], int]], *, logits: Sequence[bool] | None = None
              ) -> list[int]:
        """The batch: each (sequence, tokens, first position), with logits for each entry's last token
        (where ``logits`` says so); returns the batch rows of the entries' last tokens."""
        batch, rows, n = self._batch, [], 0
        for k, (seq, tokens, first) in enumerate(entries):
            for i, token in enumerate(tokens):
                batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, first + i, 1
                batch.seq_id[n][0] = seq
                batch.logits[n] = i == len(tokens) - 1 and (logits is None or logits[k])
                n += 1
            rows.append(n - 1)
        batch.n_tokens = n
        return rows

    def _eval(self, tokens: Sequence[int]) -> None:
        """``tokens`` into sequence 0 (where prompts are read) from ``llm.n_tokens`` on, dropping what
        sequence 0 held from there; ``llm.eval`` would drop every sequence's cells."""
        lib, llm = self._lib, self._llm
        lib.llama_memory_seq_rm(lib.llama_get_memory(llm.ctx), 0, llm.n_tokens, -1)
        for start in range(0, len(tokens), self._capacity):
            chunk = list(tokens[start:start + self._capacity])
            self._fill([(0, chunk, llm.n_tokens)])
            self._run_batch()
            llm.input_ids[llm.n_tokens:llm.n_tokens + len(chunk)] = chunk
            llm.n_tokens += len(chunk)

    def _run_batch(self) -> None:
        code = self._lib.llama_decode(self._llm.ctx, self._batch)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")

    def _admit(self, request: _Request, seq: int) -> _Slot:
        """Read the prompt in sequence 0, take the verdict from the calibrated scores, and copy the
        prompt to sequence ``seq`` (its own stream), which decodes the forced opening and then the reason."""
        task, text, label = request.task, request.text, request.label
        lib, llm = self._lib, self._llm
        prior = self._prior(task, label)
        raw, end = self._scores_of(task, text, label)
        self.usage.calls += 1
        scored = Scored.of(raw, prior, label, request.threshold)
        opening = verdict_options(task, label)[scored.label]
        forced = opening if request.evidence_line is None else f"{opening} {request.evidence_line}:"
        forced_tokens = llm.tokenize(forced.encode(), add_bos=False, special=False)
        memory = lib.llama_get_memory(llm.ctx)
        lib.llama_memory_seq_rm(memory, 0, end, -1)  # the option tokens scored past the prompt
        if seq != 0:
            lib.llama_memory_seq_rm(memory, seq, -1, -1)
            lib.llama_memory_seq_cp(memory, 0, seq, -1, -1)  # the whole stream: the prompt
        grammar = lib.llama_sampler_init_grammar(
            self._vocab, rest_grammar(text, with_line=request.evidence_line is None).encode(), b"root")
        if not grammar:
            raise ValueError("llama.cpp rejected the output grammar")
        rng = np.random.default_rng(self.settings.seed + 1) if request.attempt > 1 else None
        return _Slot(seq=seq, request=request, scored=scored, forced=forced, pending=forced_tokens, position=end,
                     limit=max(0, min(MAX_TOKENS, self._n_ctx - end - len(forced_tokens))), grammar=grammar, rng=rng)

    def _release(self, slot: _Slot) -> None:
        if slot.seq != 0:  # sequence 0's reply goes when the next prompt is read
            self._lib.llama_memory_seq_rm(self._lib.llama_get_memory(self._llm.ctx), slot.seq, -1, -1)
        if slot.grammar is not None:
            self._lib.llama_sampler_free(slot.grammar)
            slot.grammar = None
        self.usage.completion_tokens += len(slot.out)

    def _next_token(self, slot: _Slot, row: int) -> int:
        """The slot's next token from the logits at batch row ``row``: the model's own choice unless it
        breaks the grammar (then the best the grammar allows)."""
        pointer = self._lib.llama_get_logits_ith(self._llm.ctx, row)
        if not pointer:
            raise RuntimeError("llama.cpp returned no logits")
        logits = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))
        token = self._pick(logits, slot.rng)
        if self.grammar_every_token or not self._allows(slot.grammar, token):
            self.usage.grammar_passes += 1
            token = self._pick(self._mask(slot.grammar, logits), slot.rng)
        return token

    def _step(self, slots: dict[int, _Slot], waiting: deque[_Request]) -> None:
        """One llama.cpp decode for every reply in progress (the weights are read once for all): each
        takes its next token; a finished reply is parsed and answered.

        Several sequences go in as one token each, in the order of their ids: llama.cpp splits a batch
        whose sequences differ in length, or come out of order, into several passes (measured: twice
        the time). So a reply's forced opening is fed a token a step, beside the others' tokens."""
        chosen = sorted(slots.values(), key=lambda slot: slot.seq)
        self.usage.steps += 1
        feeds = [slot.pending if len(chosen) == 1 else slot.pending[:1] for slot in chosen]
        rows = self._fill([(slot.seq, feed, slot.position) for slot, feed in zip(chosen, feeds, strict=True)],
                          logits=[len(feed) == len(slot.pending) for slot, feed in zip(chosen, feeds, strict=True)])
        try:
            self._run_batch()
        except RuntimeError as exc:
            for slot in chosen:
                self._close(slots.pop(slot.seq), waiting, failure=(f"llama.cpp: {exc}", True))
            return
        for slot, feed, row in zip(chosen, feeds, rows, strict=True):
            slot.position += len(feed)
            del slot.pending[:len(feed)]
            if slot.pending:  # still forcing its opening
                continue
            try:
                token = self._next_token(slot, row)
            except RuntimeError as exc:  # the grammar allows nothing, or no logits
                self._close(slots.pop(slot.seq), waiting, failure=(f"llama.cpp: {exc}", True))
                continue
            if self._lib.llama_vocab_is_eog(self._vocab, token):
                self._close(slots.pop(slot.seq), waiting)
                continue
            self._lib.llama_sampler_accept(slot.grammar, token)
            slot.out.append(token)
            piece = self._llm.detokenize([token])
            if any(end in piece for end in _END_BYTES) or len(slot.out) >= slot.limit:
                self._close(slots.pop(slot.seq), waiting)  # whole: the last token is never fed back
            else:
                slot.pending = [token]

    def _close(self, slot: _Slot, waiting: deque[_Request], *, failure: tuple[str, bool] | None = None) -> None:
        """Free the slot's sequence and answer its request: the parsed reply, or a second attempt, or
        ``unverified`` with the reasons."""
        self._release(slot)
        request = slot.request
        if failure is not None:
            self._failed(request, waiting, *failure)
            return
        reply = slot.forced + self._llm.detokenize(slot.out).decode("utf-8", errors="replace")
        try:
            parsed = parse_reply(reply, request.task, request.text, request.label)
        except ReplyError as exc:
            self._failed(request, waiting, str(exc), False)
            return
        request.future.set_result((Explanation(
            verdict=parsed.verdict, predicted_label=request.label, suggested_label=parsed.label,
            evidence=parsed.evidence, rationale=parsed.reason, evidence_line=parsed.line,
            label_scores=slot.scored.rounded(), llm_model=self.model_name, prompt_version=prompt_version(request.task),
            latency_s=time.perf_counter() - request.started, attempts=request.attempt), False))

    def _failed(self, request: _Request, waiting: deque[_Request], reason: str, transient: bool) -> None:
        request.reasons.append(reason)
        request.transient = request.transient or transient
        if request.attempt < 2:
            request.attempt += 1
            waiting.appendleft(request)  # the retry goes first: a little temperature, another seed
            return
        result = Explanation(verdict="unverified", predicted_label=request.label,
                             reason="; ".join(request.reasons)[:500], llm_model=self.model_name,
                             prompt_version=prompt_version(request.task),
                             latency_s=time.perf_counter() - request.started, attempts=2)
        log.info("explanation unverified for task %s: %s", request.task.name, result.reason)
        request.future.set_result((result, request.transient))

    def _decoded(self, request: _Request) -> None:
        """The whole reply decoded (verdict_from=decoding, or unconstrained): one post at a time."""
        grammar = build_grammar(request.task, request.text, request.label) if self.settings.constrained else None
        retries: deque[_Request] = deque()  # where _failed puts the request back for its second attempt
        while not request.future.done():
            retries.clear()
            try:
                reply = self._generate(request.task, request.text, request.label, grammar,
                                       retry=request.attempt > 1)
                parsed = parse_reply(reply, request.task, request.text, request.label)
            except ReplyError as exc:
                self._failed(request, retries, str(exc), False)
            except (ValueError, RuntimeError) as exc:  # llama.cpp: context overflow, grammar, decode errors
                self._failed(request, retries, f"llama.cpp: {exc}", True)
            else:
                request.future.set_result((Explanation(
                    verdict=parsed.verdict, predicted_label=request.label, suggested_label=parsed.label,
                    evidence=parsed.evidence, rationale=parsed.reason, evidence_line=parsed.line,
                    llm_model=self.model_name, prompt_version=prompt_version(request.task),
                    latency_s=time.perf_counter() - request.started, attempts=request.attempt), False))

    def serve(self, first: _Request, take: Callable[[], _Request | None]) -> None:
        """Answer ``first`` and whatever ``take()`` hands over while replies are in progress, up to
        ``sequences`` of them decoded side by side (continuous batching); returns when none is left.

        Each prompt is read in sequence 0, its own KV stream (so its scores, and the verdict, are those
        it gets explained alone); the replies, each in its own stream, share every decoding step.
        Every request's future gets its answer; an unexpected error goes to every request still open,
        and is raised."""
        waiting: deque[_Request] = deque([first])
        slots: dict[int, _Slot] = {}
        with self._lock:
            try:
                while True:
                    while len(slots) < self.sequences:
                        if not waiting and (taken := take()) is not None:
                            waiting.append(taken)
                        if not waiting:
                            break
                        request = waiting.popleft()
                        if not self.scores_verdicts:
                            self._decoded(request)
                            continue
                        # One sequence: the reply is decoded where the prompt was read.
                        seq = 0 if self.sequences == 1 else min(set(range(1, self.sequences + 1)) - set(slots))
                        try:
                            slots[seq] = self._admit(request, seq)
                        except (ValueError, RuntimeError) as exc:  # a prompt too long, a decode error
                            self._failed(request, waiting, f"llama.cpp: {exc}", True)
                    if not slots:
                        if waiting:
                            continue
                        return
                    self._step(slots, waiting)
            except BaseException as exc:
                for slot in slots.values():
                    self._release(slot)
                for request in [*(slot.request for slot in slots.values()), *waiting]:
                    if not request.future.done():
                        request.future.set_exception(exc)
                raise

    def warm(self, tasks: Sequence[TaskDefinition]) -> int:
        """Evaluate and keep the prompt prefix of each (task, label) now, so that the first escalations of
        a fresh worker do not pay for it (about 2 s each for a ~550-token prefix on 2 cores); at most
        ``PREFIX_STATES`` prefixes are kept. Returns how many were built."""
        built = 0
        with self._lock:
            for task in tasks:
                for label in task.labels:
                    key = (prompt_version(task), label)
                    if key in self._states or len(self._states) >= PREFIX_STATES:
                        continue
                    n_prefix, tokens = self._prompt_tokens(task, ".", label)
                    self._feed_prompt(key, n_prefix, tokens[: n_prefix + 1])
                    if self.scores_verdicts:
                        self._prior(task, label)
                    built += 1
        return built

    def explain(self, task: TaskDefinition, text: str, predicted_label: str, *, evidence_line: int | None = None,
                threshold: float = 0.5) -> Explanation:
        """A verdict on ``predicted_label`` for ``text``; ``unverified`` (with the reason) rather than an error."""
        key = ExplanationCache.key(self.model_name, prompt_version(task), text, predicted_label,
                                   evidence_line=evidence_line, threshold=threshold)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            return hit
        result, transient = self.generate(task, text, predicted_label, evidence_line=evidence_line,
                                          threshold=threshold)
        if self.cache is not None and not transient:
            self.cache.put(key, result)
        return result

    def generate(self, task: TaskDefinition, text: str, predicted_label: str, *, evidence_line: int | None = None,
                 threshold: float = 0.5) -> tuple[Explanation, bool]:
        """The explanation, uncached, and whether its failure (if any) was transient (not to be cached).

        Constrained (the default): the verdict, and the label a reject names, come from the model's
        contextually calibrated scores of the reply's openings, confirm when P(confirm) >= ``threshold``
        (fitted on validation by explain-eval); then only the reason is decoded, after the classifier's
        ``evidence_line`` where one is given. Unconstrained: the whole reply is decoded, as asked in words.
        Failures are retried once (a little temperature), then answered ``unverified`` with the reasons."""
        request = self.request(task, text, predicted_label, evidence_line=evidence_line, threshold=threshold)
        self.serve(request, lambda: None)
        return request.future.result()

    def request(self, task: TaskDefinition, text: str, predicted_label: str, *, evidence_line: int | None = None,
                threshold: float = 0.5) -> _Request:
        """A request for ``serve``, checked: the label is the task's, the evidence line one of the post's."""
        if predicted_label not in task.labels:
            raise ValueError(f"{predicted_label!r} is not a label of task {task.name}")
        if evidence_line is not None and not 1 <= evidence_line <= len(post_lines(text)):
            log.warning("evidence line %s is not a line of the post; the LLM chooses one", evidence_line)
            evidence_line = None
        return _Request(task=task, text=text, label=predicted_label, evidence_line=evidence_line,
                        threshold=threshold)


class ExplainerPool:
    """``n_parallel`` llama.cpp contexts over one GGUF file, each decoding up to ``sequences`` replies
    side by side.

    On a CPU, two contexts with one thread each explain about 1.5x as many posts per second as one
    context with two threads (measured on 2 cores with SmolLM2-135M: 4.28 vs 2.92 explanations/s, the
    same verdicts): a small model's token steps are too short to keep two threads busy, two sequences
    side by side are not. The weights are memory-mapped once by the OS; each context keeps its own KV
    cache and prompt prefixes. Requests wait in one queue; each context's thread takes one, and while
    its replies are being decoded, takes more as they come. One cache serves all contexts, and a cache
    hit never waits for a context.
    """

    def __init__(self, engines: Sequence[LlamaExplainer], *, cache: ExplanationCache | None):
        if not engines:
            raise ValueError("an explainer pool needs at least one context")
        self.engines = list(engines)
        self.cache = cache
        first = self.engines[0]
        self.model_path, self.fingerprint, self.model_name = first.model_path, first.fingerprint, first.model_name
        self.settings = first.settings
        self._requests: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._serve, args=(engine,), name=f"llm-context-{i}", daemon=True)
                         for i, engine in enumerate(self.engines)]
        for thread in self._threads:
            thread.start()

    @classmethod
    def load(cls, model_path: Path, settings: ExplainerSettings, *,
             cache: ExplanationCache | None = None) -> ExplainerPool:
        per_context = settings.model_copy(update={"n_threads": context_threads(settings)})
        return cls([LlamaExplainer.load(model_path, per_context, cache=None) for _ in range(settings.n_parallel)],
                   cache=cache)

    def _take(self) -> _Request | None:
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            return None
        if request is None:  # closing: leave the stop for this context's loop
            self._requests.put(None)
        return request

    def _serve(self, engine: LlamaExplainer) -> None:
        while (first := self._requests.get()) is not None:
            try:
                engine.serve(first, self._take)
            except Exception:  # already handed to every open request; the context serves on
                log.exception("llama.cpp context failed while explaining")

    def close(self) -> None:
        """Stop the contexts' threads once the requests already queued are answered."""
        for _ in self._threads:
            self._requests.put(None)
        for thread in self._threads:
            thread.join()

    @property
    def parallel(self) -> int:
        return sum(engine.sequences for engine in self.engines)

    @property
    def cache_hits(self) -> int:
        return self.cache.hits if self.cache is not None else 0

    @property
    def usage(self) -> Usage:
        total = Usage()
        for engine in self.engines:
            for name in vars(total):
                setattr(total, name, getattr(total, name) + getattr(engine.usage, name))
        return total

    def warm(self, tasks: Sequence[TaskDefinition]) -> int:
        """Every context builds its prompt prefixes (in parallel); returns how many were built in all."""
        with ThreadPoolExecutor(max_workers=len(self.engines), thread_name_prefix="llm-warm") as pool:
            return sum(pool.map(lambda engine: engine.warm(tasks), self.engines))

    def explain(self, task: TaskDefinition, text: str, predicted_label: str, *, evidence_line: int | None = None,
                threshold: float = 0.5) -> Explanation:
        key = ExplanationCache.key(self.model_name, prompt_version(task), text, predicted_label,
                                   evidence_line=evidence_line, threshold=threshold)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            return hit
        request = self.engines[0].request(task, text, predicted_label, evidence_line=evidence_line,
                                          threshold=threshold)
        self._requests.put(request)
        result, transient = request.future.result()  # waits while the contexts are busy
        if self.cache is not None and not transient:
            self.cache.put(key, result)
        return result
