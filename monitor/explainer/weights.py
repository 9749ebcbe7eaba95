"""Which weights the explainer runs: its GGUF as configured, or a Q8_0 copy of it made on this machine.

A small model quantised to 4 or 5 bits spends its time on arithmetic (unpacking the blocks), not on
reading memory, so on some CPUs the same weights requantised to 8 bits read prompts faster (measured
on an AVX-512 EPYC with SmolLM2-135M Q4_1: 4.7 against 6.4 ms a prompt token). Whether it pays
depends on the CPU and the model, so ``weights=auto`` times both on a short prompt and a few decoding
steps at load, keeps the faster (by the margin), and remembers the choice per machine, llama.cpp
build, file and thread count, beside the copies (``weights_cache``). A copy is another model to the
rest of the system: its own file name and fingerprint, so grants and measurements never carry over.

Only Q8_0 is offered because only it keeps the model. Over 3,606 tokens of 24 Druglib reviews, a Q8_0
copy of the shipped Q4_1 differed from it by a mean KL of 0.006 a token (the same next token at 95.2%
of positions). Q4_0 and IQ4_NL copies, which llama.cpp repacks for AVX-512 and which decoded a token
1.3-1.7x faster in five runs, differed by 0.30 and 0.19 (67.4% and 76.1% the same token): other, worse
models, not faster versions of the same one.

Pure decisions here; the timing and the copying use llama.cpp (``time_weights``, ``q8_0_copy``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from monitor.cpu_tuning import CpuIdentity, choose_fastest, read_cpu_identity, read_entry, write_entry
from monitor.errors import ModelError

log = logging.getLogger(__name__)

Weights = Literal["as_configured", "q8_0"]
#: llama.cpp file types (``general.file_type``) worth trying as Q8_0: 2 to 5 bits per weight.
REQUANTISABLE = {2: "Q4_0", 3: "Q4_1", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M",
                 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 21: "Q2_K_S",
                 25: "IQ4_NL", 30: "IQ4_XS"}
#: Larger files are not tried: their decoding is bound by memory, and a Q8_0 copy reads about twice
#: the bytes a token (and takes twice the disk).
MAX_BYTES = 1 << 30
CHOICES_FILE = "choices.json"
#: What is timed: a prompt this long read in one go, then this many tokens decoded one at a time
#: (about one explanation of a short post), best of ``ROUNDS`` alternating rounds.
PROMPT_TOKENS, DECODE_TOKENS, ROUNDS = 48, 16, 3
_TEXT = ("Three weeks on the new tablets and my stomach has been upset every morning, with headaches in the "
         "afternoon; my doctor says it should settle, but I am thinking of stopping them. ") * 4


def not_eligible(file_type: int | None, size: int) -> str | None:
    """Why a GGUF is not worth a Q8_0 copy (its type, its size), or None when it is."""
    if file_type not in REQUANTISABLE:
        return f"file type {file_type} is not 2-5 bits a weight"
    if size > MAX_BYTES:
        return f"{size / (1 << 20):.0f} MiB: decoding is bound by memory, a Q8_0 copy would read twice as much"
    return None


def choice_key(cpu: CpuIdentity, *, llama_version: str, fingerprint: str, threads: int) -> str:
    """One remembered choice per (CPU model and flags, llama.cpp build, file, thread count); readable."""
    return f"{fingerprint} | llama-cpp-python {llama_version} | {threads} threads | {cpu.model_name} | flags {cpu.flags_hash}"


@dataclass(frozen=True)
class WeightsChoice:
    """The weights a GGUF runs with here, the seconds each option took, and whether it was timed now."""

    weights: Weights
    path: Path
    seconds: dict[str, float]
    source: Literal["measured", "cache", "configured"]
    why: str = ""

    def describe(self) -> str:
        timed = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in self.seconds.items())
        return f"{self.weights} ({self.source}{': ' + timed if timed else ''}{'; ' + self.why if self.why else ''})"


def quantise(source: Path, target: Path, file_type: int) -> None:
    """``source`` requantised by llama.cpp to ``file_type`` (a ``LLAMA_FTYPE_MOSTLY_*``) at ``target``."""
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = file_type
    params.allow_requantize = True
    params.nthread = max(1, os.cpu_count() or 1)
    with suppress_stdout_stderr(disable=False):  # llama.cpp logs every tensor it converts
        failed = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if failed:
        raise ModelError(f"llama.cpp could not requantise {source} to file type {file_type}")


def q8_0_copy(source: Path, folder: Path, fingerprint: str) -> Path:
    """``source`` requantised to Q8_0 in ``folder`` (made once; a half-written file is never used)."""
    import llama_cpp

    target = folder / f"{source.stem}.{fingerprint[:8]}.q8_0.gguf"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=target.name, suffix=".tmp")
    os.close(fd)
    try:
        log.info("requantising %s to Q8_0 in %s (once)", source.name, folder)
        quantise(source, Path(tmp), llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def file_type(path: Path) -> int | None:
    """The GGUF's ``general.file_type`` (llama.cpp's quantisation type), read with its vocabulary only;
    None when the file does not say."""
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    with suppress_stdout_stderr(disable=False):  # llama.cpp logs every key it loads
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise ModelError(f"llama.cpp cannot read {path}")
    try:
        value = ctypes.create_string_buffer(32)
        if llama_cpp.llama_model_meta_val_str(model, b"general.file_type", value, len(value)) < 0:
            return None
        return int(value.value.decode()) if value.value.strip().isdigit() else None
    finally:
        llama_cpp.llama_model_free(model)


def time_weights(paths: dict[str, Path], threads: int) -> dict[str, float]:
    """Seconds each GGUF takes for ``PROMPT_TOKENS`` read at once and ``DECODE_TOKENS`` decoded one by
    one, on ``threads`` threads: the best of ``ROUNDS`` rounds, the options alternating."""
    from llama_cpp import Llama

    models = {name: Llama(model_path=str(path), n_ctx=256, n_threads=threads, n_threads_batch=threads,
                          verbose=False) for name, path in paths.items()}
    try:
        best = {name: float("inf") for name in models}
        for _ in range(ROUNDS):
            for name, llm in models.items():
                tokens = llm.tokenize(_TEXT.encode())[:PROMPT_TOKENS + DECODE_TOKENS]
                llm.reset()
                started = time.perf_counter()
                llm.eval(tokens[:PROMPT_TOKENS])
                for token in tokens[PROMPT_TOKENS:]:
                    llm.eval([token])
                best[name] = min(best[name], time.perf_counter() - started)
        return best
    finally:
        for llm in models.values():
            llm.close()


def choose_weights(source: Path, *, weights: Literal["auto", "as_configured", "q8_0"], threads: int,
                   fingerprint: str, cache: Path | None, gpu_layers: int = 0) -> WeightsChoice:
    """The GGUF the explainer loads: ``source``, or its Q8_0 copy (``weights="q8_0"``, or ``"auto"`` when
    the copy was measured faster here by ``cpu_tuning.MARGIN``; remembered in ``cache``). With layers
    on a GPU, ``auto`` keeps the file: the timing is of CPU arithmetic, and a GPU reads twice the bytes."""
    if weights == "as_configured":
        return WeightsChoice("as_configured", source, {}, "configured")
    if weights == "auto" and gpu_layers != 0:
        return WeightsChoice("as_configured", source, {}, "configured", "layers run on the GPU: not timed on the CPU")
    if cache is None:
        if weights == "q8_0":
            raise ModelError("explainer weights q8_0 need MONITOR_EXPLAINER__WEIGHTS_CACHE for the copy")
        return WeightsChoice("as_configured", source, {}, "configured", "no weights cache to keep a copy in")
    if weights == "q8_0":
        return WeightsChoice("q8_0", q8_0_copy(source, cache, fingerprint), {}, "configured")
    import llama_cpp

    cpu = read_cpu_identity()
    key = choice_key(cpu, llama_version=llama_cpp.__version__, fingerprint=fingerprint, threads=threads)
    remembered = read_entry(cache / CHOICES_FILE, key)
    if remembered is not None and remembered.get("weights") in ("as_configured", "q8_0"):
        chosen = remembered["weights"]
        path = q8_0_copy(source, cache, fingerprint) if chosen == "q8_0" else source
        return WeightsChoice(chosen, path, {str(k): float(v) for k, v in remembered.get("seconds", {}).items()},
                             "cache", str(remembered.get("why", "")))
    why = not_eligible(file_type(source), source.stat().st_size)
    seconds: dict[str, float] = {}
    chosen: Weights = "as_configured"
    if why is None:
        copy = q8_0_copy(source, cache, fingerprint)
        seconds = time_weights({"as_configured": source, "q8_0": copy}, threads)
        chosen = choose_fastest({name: 1 / value for name, value in seconds.items()}, baseline="as_configured")
        if chosen == "as_configured":  # a copy that lost is never loaded: its disk goes back
            copy.unlink(missing_ok=True)
        why = f"on {cpu.model_name}"
    write_entry(cache / CHOICES_FILE, key, {"weights": chosen, "seconds": seconds, "why": why})
    # Asked again (not the copy timed above): a worker timing at the same moment may have found the copy
    # slower and removed it, and then it is made again.
    path = q8_0_copy(source, cache, fingerprint) if chosen == "q8_0" else source
    return WeightsChoice(chosen, path, seconds, "measured", why)
