"""The llama-cpp-python adapter: grammar-constrained, cached, batched, never crashing.

Temperature 0 and a fixed seed; one retry (a little temperature, another seed) when a reply
breaks the contract; after that the result is ``unverified`` with the reason. Results are cached
by (model fingerprint, prompt version, post hash, predicted label), so replays and duplicate posts
do not pay twice.

Generation is our own loop over a llama.cpp context of our own rather than
``create_chat_completion``, for measured reasons (tests/benchmarks/bench_explainer.py):
- several posts are in flight in one context (``settings.sequences``), and the next reply token of
  each goes through the model in one forward pass: the weights are read once for all of them.
- the grammar is consulted only when the model's own choice breaks it (about one token in
  fifteen): llama.cpp's grammar sampler otherwise tests all 49,152 vocabulary entries at every
  token, ~7 ms a token on this 2-core box against ~14 ms for SmolLM2-135M's forward pass. At
  temperature 0 the reply is the same token for token.
- the prompt prefix (rules, worked examples, the predicted label) is evaluated once per (task,
  label) and its KV state kept, so alternating tasks or labels does not re-read ~470 tokens.
- it stops as soon as the reply is whole (the reason's first sentence end), so the final token is
  never fed back to the model for nothing.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from collections.abc import Callable, Generator, Sequence
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


@dataclass
class _Feed:
    """What a request needs evaluated next: ``tokens`` of its sequence from position ``pos`` (anything
    the sequence held from there on is dropped first), and whether it wants the last token's logits."""

    tokens: list[int]
    pos: int
    logits: bool = True


class _Request:
    """One request driven by the scheduler: a generator that yields ``_Feed``s and is sent back the
    logits of each (a view valid until the next forward pass), and returns its result."""

    def __init__(self, steps: Callable[[int], Generator[_Feed, np.ndarray | None, Any]]):
        self.steps = steps
        self.slot = -1
        self.generator: Generator[_Feed, np.ndarray | None, Any] | None = None
        self.feed: _Feed | None = None
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class LlamaExplainer:
    """Asks a local GGUF model whether the classifier's label is right, under the output contract.

    One llama.cpp context holds ``settings.sequences`` sequences, each explaining one post; every
    forward pass evaluates the next tokens of all of them together (a new post's prompt beside the
    others' next reply tokens), so the weights are read once per step for all of them. Each request
    is a generator of the tokens it needs evaluated (``_Feed``); whichever calling thread holds the
    step lock runs the next forward pass for every request (there is no scheduler thread to leak).
    Each sequence has its own KV cells (``n_ctx`` tokens; llama.cpp's non-unified cache) and flash
    attention is off: a post's scores are then the same to the last digit whatever else shares the pass.
    """

    def __init__(self, llm: Any, model_path: Path, settings: ExplainerSettings, *, cache: ExplanationCache | None):
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._llm = llm
        self._lib = llama_cpp
        self.settings = settings
        self.cache = cache
        self.model_path = model_path
        self.fingerprint = file_fingerprint(model_path)
        # Verdicts decoded greedily are another explainer than verdicts read from scores: their grants,
        # measurements and cached replies are kept apart by name.
        decoded = "" if settings.verdict_from == "scores" else "/decoded"
        self.model_name = f"{model_path.name}#{self.fingerprint[:8]}{decoded}"
        self.usage = Usage()
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
        self._open_context()
        self._queue: deque[_Request] = deque()
        self._active: list[_Request] = []
        self._free_slots = list(range(self.parallel - 1, -1, -1))
        self._step_lock = threading.Lock()
        self._prompt_turn = False

    def _open_context(self) -> None:
        lib = self._lib
        threads = self.settings.n_threads or max(1, (os.cpu_count() or 2) // 2)
        params = lib.llama_context_default_params()
        params.n_seq_max = self.settings.sequences
        params.kv_unified = False
        params.n_ctx = self.settings.n_ctx * self.settings.sequences
        # One post's prompt fits one pass (a post split over passes may score differently in the last digits).
        params.n_batch = max(512, self.settings.n_ctx)
        params.n_ubatch = 512
        params.n_threads = params.n_threads_batch = threads
        params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.no_perf = True
        ctx = lib.llama_init_from_model(self._llm.model, params)
        if not ctx:
            raise ModelError(f"llama.cpp cannot make a context of {self.settings.sequences} x {self.settings.n_ctx} "
                             f"tokens for {self.model_path}")
        self._ctx = ctx
        self._n_batch = params.n_batch
        self._n_ctx_seq = lib.llama_n_ctx_seq(ctx)
        self._batch = lib.llama_batch_init(self._n_batch, 0, 1)
        self._memory = lib.llama_get_memory(ctx)

    def close(self) -> None:
        """Free the llama.cpp context (the model goes with the ``Llama`` object)."""
        if getattr(self, "_ctx", None):
            with self._step_lock:
                self._lib.llama_batch_free(self._batch)
                self._lib.llama_free(self._ctx)
                self._ctx = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to free into
            pass

    @classmethod
    def load(cls, model_path: Path, settings: ExplainerSettings, *,
             cache: ExplanationCache | None = None) -> LlamaExplainer:
        from llama_cpp import Llama

        if not model_path.is_file():
            raise ModelError(f"GGUF file not found: {model_path}")
        try:
            # The Llama object serves the weights, the tokenizer and the chat template; its own context
            # is left tiny, the explainer makes the one it decodes in (``_open_context``).
            llm = Llama(model_path=str(model_path), n_ctx=64, n_batch=64, n_threads=1,
                        n_gpu_layers=settings.n_gpu_layers, seed=settings.seed, verbose=False)
            return cls(llm, model_path, settings, cache=cache)
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"llama.cpp cannot load {model_path}: {exc}") from exc

    @property
    def parallel(self) -> int:
        """Posts explained at once: the context's sequences."""
        return self.settings.sequences

    @property
    def scores_verdicts(self) -> bool:
        """Whether the verdict is read from scores (the default), not decoded."""
        return self.settings.constrained and self.settings.verdict_from == "scores"

    @property
    def cache_hits(self) -> int:
        return self.cache.hits if self.cache is not None else 0

    # -- the scheduler: every request's next tokens in one forward pass ---------------------------

    def _run(self, requests: Sequence[_Request]) -> None:
        """Queue ``requests`` and drive forward passes until every one is done."""
        self._queue.extend(requests)
        for request in requests:
            while not request.done.is_set():
                with self._step_lock:
                    if not request.done.is_set():
                        self._step()

    def _ask(self, steps: Callable[[int], Generator[_Feed, np.ndarray | None, Any]]) -> Any:
        request = _Request(steps)
        self._run([request])
        return request.outcome()

    def _advance(self, request: _Request, logits: np.ndarray | None = None, error: BaseException | None = None) -> None:
        try:
            assert request.generator is not None
            request.feed = request.generator.throw(error) if error is not None else request.generator.send(logits)
            return
        except StopIteration as stop:
            request.value = stop.value
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, which decides
            request.error = exc
        self._active.remove(request)
        self._lib.llama_memory_seq_rm(self._memory, request.slot, -1, -1)
        self._free_slots.append(request.slot)
        request.done.set()

    def _step(self) -> None:
        """Admit queued requests into free sequences, then one forward pass over every active one."""
        if self._ctx is None:
            raise RuntimeError("the explainer is closed")
        while self._queue and self._free_slots:
            request = self._queue.popleft()
            request.slot = self._free_slots.pop()
            request.generator = request.steps(request.slot)
            self._active.append(request)
            self._advance(request)
        if not self._active:
            return
        lib, batch = self._lib, self._batch
        # A pass is either one request's prompt (several tokens) alone, or one next token of every request
        # that decodes. llama.cpp splits a pass that mixes lengths into micro-batches of equal length per
        # sequence, and a prompt split at another place scores differently in the last digits (measured);
        # so a post's scores would depend on what else was in flight. Prompts and tokens take turns.
        singles = [r for r in self._active if len(r.feed.tokens) == 1]
        prompts = [r for r in self._active if len(r.feed.tokens) > 1]
        self._prompt_turn = not self._prompt_turn
        chosen = prompts[:1] if prompts and (self._prompt_turn or not singles) else singles
        fed: list[tuple[_Request, int]] = []
        n = 0
        for request in chosen:
            feed = request.feed
            lib.llama_memory_seq_rm(self._memory, request.slot, feed.pos, -1)
            for offset, token in enumerate(feed.tokens):
                batch.token[n] = token
                batch.pos[n] = feed.pos + offset
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = request.slot
                batch.logits[n] = False
                n += 1
            batch.logits[n - 1] = feed.logits
            fed.append((request, n - 1))
        batch.n_tokens = n
        code = lib.llama_decode(self._ctx, batch)
        if code != 0:
            for request, _ in fed:
                self._advance(request, error=RuntimeError(f"llama_decode failed ({code})"))
            return
        for request, last in fed:
            logits = None
            if request.feed.logits:
                pointer = lib.llama_get_logits_ith(self._ctx, last)
                if not pointer:
                    self._advance(request, error=RuntimeError("llama.cpp returned no logits"))
                    continue
                logits = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))
            self._advance(request, logits)

    # -- the prompt as tokens: a kept (task, label) prefix, then the post -------------------------

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

    def _restore(self, slot: int, key: tuple[str, str]) -> bool:
        """Put the prefix's kept KV state into sequence ``slot``."""
        state = self._states[key]
        buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        self._lib.llama_memory_seq_rm(self._memory, slot, -1, -1)
        if self._lib.llama_state_seq_set_data(self._ctx, buffer, len(state), slot) != len(state):
            self._states.pop(key)
            self._lib.llama_memory_seq_rm(self._memory, slot, -1, -1)
            return False
        self._states.move_to_end(key)
        self.usage.prefix_restores += 1
        return True

    def _keep(self, slot: int, key: tuple[str, str]) -> None:
        size = self._lib.llama_state_seq_get_size(self._ctx, slot)
        buffer = (ctypes.c_uint8 * size)()
        if self._lib.llama_state_seq_get_data(self._ctx, buffer, size, slot) == size:
            self._states[key] = bytes(buffer)
            while len(self._states) > PREFIX_STATES:
                self._states.popitem(last=False)

    def _read_prompt(self, slot: int, task: TaskDefinition, text: str, predicted_label: str):  # noqa: ANN202
        """Steps that put the prompt in sequence ``slot``: the (task, label) prefix restored from its kept
        state (or evaluated and kept), then the post, always evaluated whole from the prefix's end, so
        the same question always gets the same scores. Returns (where the prompt ends, its logits). A
        prompt that leaves less than ``MIN_ROOM`` tokens for the reply is a ``ValueError``."""
        n_prefix, tokens = self._prompt_tokens(task, text, predicted_label)
        if self._n_ctx_seq - len(tokens) < MIN_ROOM:
            raise ValueError(f"a prompt of {len(tokens)} tokens leaves no room for the reply "
                             f"in n_ctx={self._n_ctx_seq}")
        key = (prompt_version(task), predicted_label)
        if key in self._states and self._restore(slot, key):
            self.usage.reused_tokens += n_prefix
        else:
            yield _Feed(tokens[:n_prefix], 0, logits=False)
            self._keep(slot, key)
            self.usage.prompt_tokens += n_prefix
        self.usage.prompt_tokens += len(tokens) - n_prefix
        logits = yield _Feed(tokens[n_prefix:], n_prefix)
        return len(tokens), logits

    # -- scoring the verdict options -------------------------------------------------------------

    @staticmethod
    def _logprobs(logits: np.ndarray) -> np.ndarray:
        values = logits.astype(np.float64)
        top = values.max()
        return values - (top + np.log(np.exp(values - top).sum()))

    def _score(self, options: dict[str, list[int]], base: int, logits: np.ndarray):  # noqa: ANN202
        """Steps giving the log-probability of each option's tokens from position ``base`` (``logits``
        are the next token's): one forward pass for the first tokens, and one more token only where two
        options share their first tokens."""
        logp = self._logprobs(logits)
        groups: dict[int, dict[str, list[int]]] = {}
        for name, tokens in options.items():
            groups.setdefault(tokens[0], {})[name] = tokens[1:]
        scores: dict[str, float] = {}
        for token, rest in groups.items():
            longer = {name: tokens for name, tokens in rest.items() if tokens}
            for name in rest:
                scores[name] = float(logp[token])
            if len(longer) > 1:  # they part later: score what follows the shared token
                following = yield _Feed([token], base)
                for name, value in (yield from self._score(longer, base + 1, following)).items():
                    scores[name] += value
        return scores

    def _option_tokens(self, task: TaskDefinition, predicted_label: str) -> dict[str, list[int]]:
        return {label: self._llm.tokenize(opening.encode(), add_bos=False, special=False)
                for label, opening in verdict_options(task, predicted_label).items()}

    def _scores_of(self, slot: int, task: TaskDefinition, text: str, predicted_label: str):  # noqa: ANN202
        """Steps giving each label's verdict-option log-probability for ``text``, and where the prompt ends."""
        end, logits = yield from self._read_prompt(slot, task, text, predicted_label)
        return (yield from self._score(self._option_tokens(task, predicted_label), end, logits)), end

    def _prior(self, slot: int, task: TaskDefinition, predicted_label: str):  # noqa: ANN202
        """Steps giving the mean log-probability of each verdict option over the content-free posts
        (computed once per prompt version and label)."""
        key = (prompt_version(task), predicted_label)
        if key not in self._priors:
            runs = []
            for text in CONTENT_FREE:
                runs.append((yield from self._scores_of(slot, task, text, predicted_label))[0])
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

    def _decode(self, grammar_text: str | None, logits: np.ndarray, pos: int, *, retry: bool):  # noqa: ANN202
        """Steps of greedy (or, on retry, sampled) tokens from position ``pos`` until the reply's end
        (prompts.REPLY_END); the grammar is applied to the whole vocabulary only when the model's first
        choice breaks it. The final token is never fed back for nothing."""
        lib, llm = self._lib, self._llm
        rng = np.random.default_rng(self.settings.seed + 1) if retry else None
        grammar = None
        if grammar_text is not None:
            grammar = lib.llama_sampler_init_grammar(self._vocab, grammar_text.encode(), b"root")
            if not grammar:
                raise ValueError("llama.cpp rejected the output grammar")
        out: list[int] = []
        try:
            for _ in range(min(MAX_TOKENS, self._n_ctx_seq - pos)):
                token = self._pick(logits, rng)
                if grammar is not None and (self.grammar_every_token or not self._allows(grammar, token)):
                    self.usage.grammar_passes += 1
                    token = self._pick(self._mask(grammar, logits), rng)
                if lib.llama_vocab_is_eog(self._vocab, token):
                    break
                if grammar is not None:
                    lib.llama_sampler_accept(grammar, token)
                out.append(token)
                if any(end in llm.detokenize([token]) for end in _END_BYTES):
                    break
                logits = yield _Feed([token], pos)
                pos += 1
        finally:
            if grammar is not None:
                lib.llama_sampler_free(grammar)
            self.usage.completion_tokens += len(out)
        return llm.detokenize(out).decode("utf-8", errors="replace")

    def _decoded_steps(self, slot: int, task: TaskDefinition, text: str, predicted_label: str,
                       grammar_text: str | None, *, retry: bool):  # noqa: ANN202
        """The whole reply decoded (verdict_from=decoding, or unconstrained)."""
        end, logits = yield from self._read_prompt(slot, task, text, predicted_label)
        self.usage.calls += 1
        return (yield from self._decode(grammar_text, logits, end, retry=retry)), None

    def _scored_steps(self, slot: int, task: TaskDefinition, text: str, predicted_label: str, *,
                      evidence_line: int | None, threshold: float, retry: bool):  # noqa: ANN202
        """The verdict from the model's calibrated scores of the options, then only the reason decoded
        (and the evidence line, when the classifier did not choose it)."""
        prior = yield from self._prior(slot, task, predicted_label)
        raw, end = yield from self._scores_of(slot, task, text, predicted_label)
        self.usage.calls += 1
        scored = Scored.of(raw, prior, predicted_label, threshold)
        opening = verdict_options(task, predicted_label)[scored.label]
        forced = opening if evidence_line is None else f"{opening} {evidence_line}:"
        tokens = self._llm.tokenize(forced.encode(), add_bos=False, special=False)
        logits = yield _Feed(tokens, end)
        grammar = rest_grammar(text, with_line=evidence_line is None)
        return forced + (yield from self._decode(grammar, logits, end + len(tokens), retry=retry)), scored

    def _warm_steps(self, slot: int, task: TaskDefinition, label: str):  # noqa: ANN202
        n_prefix, tokens = self._prompt_tokens(task, ".", label)
        key = (prompt_version(task), label)
        if key not in self._states:
            yield _Feed(tokens[:n_prefix], 0, logits=False)
            self._keep(slot, key)
            self.usage.prompt_tokens += n_prefix
        if self.scores_verdicts:
            yield from self._prior(slot, task, label)

    def warm(self, tasks: Sequence[TaskDefinition]) -> int:
        """Evaluate and keep the prompt prefix of each (task, label) now (and, reading verdicts from
        scores, its content-free prior), so that the first escalations of a fresh worker do not pay for
        it (about 2 s each for a ~550-token prefix on 2 cores); at most ``PREFIX_STATES`` prefixes are
        kept. Returns how many were built."""
        wanted = []
        for task in tasks:
            for label in task.labels:
                key = (prompt_version(task), label)
                if key not in self._states and len(wanted) + len(self._states) < PREFIX_STATES:
                    wanted.append((task, label))
        requests = [_Request(lambda slot, t=task, lab=label: self._warm_steps(slot, t, lab))
                    for task, label in wanted]
        self._run(requests)
        for request in requests:
            request.outcome()
        return len(requests)

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
        ``evidence_line`` where one is given. Unconstrained: the whole reply is decoded, as asked in words."""
        if predicted_label not in task.labels:
            raise ValueError(f"{predicted_label!r} is not a label of task {task.name}")
        version = prompt_version(task)
        if evidence_line is not None and not 1 <= evidence_line <= len(post_lines(text)):
            log.warning("evidence line %s is not a line of the post; the LLM chooses one", evidence_line)
            evidence_line = None
        # Decoding the whole reply: under the grammar, or (to measure it) free.
        grammar = build_grammar(task, text, predicted_label) \
            if self.settings.constrained and not self.scores_verdicts else None
        started = time.perf_counter()
        reasons = []
        transient = False
        for attempt in (1, 2):
            scored = None
            try:
                retry = attempt > 1
                if self.scores_verdicts:
                    reply, scored = self._ask(lambda slot, retry=retry: self._scored_steps(
                        slot, task, text, predicted_label, evidence_line=evidence_line, threshold=threshold,
                        retry=retry))
                else:
                    reply, _ = self._ask(lambda slot, retry=retry: self._decoded_steps(
                        slot, task, text, predicted_label, grammar, retry=retry))
                parsed = parse_reply(reply, task, text, predicted_label)
            except ReplyError as exc:
                reasons.append(str(exc))
                continue
            except (ValueError, RuntimeError) as exc:  # llama.cpp: context overflow, grammar, decode errors
                reasons.append(f"llama.cpp: {exc}")
                transient = True
                continue
            return Explanation(verdict=parsed.verdict, predicted_label=predicted_label,
                               suggested_label=parsed.label, evidence=parsed.evidence, rationale=parsed.reason,
                               evidence_line=parsed.line,
                               label_scores=None if scored is None else scored.rounded(),
                               llm_model=self.model_name, prompt_version=version,
                               latency_s=time.perf_counter() - started, attempts=attempt), False
        result = Explanation(verdict="unverified", predicted_label=predicted_label, reason="; ".join(reasons)[:500],
                             llm_model=self.model_name, prompt_version=version,
                             latency_s=time.perf_counter() - started, attempts=2)
        log.info("explanation unverified for task %s: %s", task.name, result.reason)
        return result, transient

class ExplainerPool:
    """``n_parallel`` llama.cpp contexts over one GGUF file, each explaining ``sequences`` posts at once.

    On a CPU, two contexts with one thread each explain about 1.5x as many posts per second as one
    context with two threads explaining one post (measured on 2 cores with SmolLM2-135M: 4.28 vs 2.92
    explanations/s, the same verdicts): a small model's single-token steps are too short to keep two
    threads busy. Batching several sequences in one context fills them too (bench_explainer.py
    --layouts compares the layouts). The weights are memory-mapped once by the OS; each context keeps
    its own KV cache and prompt prefixes. One cache serves all contexts, and a cache hit never waits.
    """

    def __init__(self, engines: Sequence[LlamaExplainer], *, cache: ExplanationCache | None):
        if not engines:
            raise ValueError("an explainer pool needs at least one context")
        self.engines = list(engines)
        self.cache = cache
        first = self.engines[0]
        self.model_path, self.fingerprint, self.model_name = first.model_path, first.fingerprint, first.model_name
        self.settings = first.settings
        self._free: queue.SimpleQueue[LlamaExplainer] = queue.SimpleQueue()
        for _ in range(max(engine.parallel for engine in self.engines)):  # interleaved: contexts fill evenly
            for engine in self.engines:
                if _ < engine.parallel:
                    self._free.put(engine)

    @classmethod
    def load(cls, model_path: Path, settings: ExplainerSettings, *,
             cache: ExplanationCache | None = None) -> ExplainerPool:
        # Threads per context: the configured count, else the cores shared out (at least one each).
        threads = settings.n_threads or max(1, (os.cpu_count() or 2) // settings.n_parallel)
        per_context = settings.model_copy(update={"n_threads": threads})
        return cls([LlamaExplainer.load(model_path, per_context, cache=None) for _ in range(settings.n_parallel)],
                   cache=cache)

    @property
    def parallel(self) -> int:
        return sum(engine.parallel for engine in self.engines)

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
        engine = self._free.get()  # blocks while every context is busy
        try:
            result, transient = engine.generate(task, text, predicted_label, evidence_line=evidence_line,
                                                threshold=threshold)
        finally:
            self._free.put(engine)
        if self.cache is not None and not transient:
            self.cache.put(key, result)
        return result
