"""Benchmark (not a test): the explainer's output contracts, explanations/s and share of valid replies.

    .venv/bin/python tests/benchmarks/bench_explainer.py [--task druglib_adverse] [--posts 20] [--gguf PATH]

Three contracts on the same real prompts (task rules + two worked examples + the post), one
process, one model, so the ratios hold on a noisy machine:
  json_schema   a full JSON-schema grammar (llama.cpp's from_json_schema), reply parsed as JSON
  minimal       the project's per-post GBNF: fixed words, label tied to verdict, evidence one of
                the post's clauses, one free line of reason
  unconstrained the same four-line format asked for in words only, parsed strictly
A reply is valid when it parses and obeys the contract (label in the task, evidence in the post).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from monitor.explainer.prompts import ReplyError, build_grammar, build_messages, parse_reply, sanitise_post
from monitor.tasks import TaskDefinition, load_task

POSTS = [
    "Started metformin last month and my stomach has been a mess every single day.",
    "Three weeks on sertraline and honestly I feel more like myself again, no side effects.",
    "Does anyone know if the pharmacy on Main Street is open on Sundays?",
    "Lisinopril gave me a dry cough that kept me up every night, switched after two months.",
    "The new inhaler works but my hands shake for an hour after each puff.",
    "Took ibuprofen for my back and it helped, nothing else to report.",
    "After the second dose of the antibiotic I broke out in hives all over my chest and arms.",
    "My doctor doubled my levothyroxine and I have more energy, sleeping fine.",
    "Prednisone made me so hungry and angry, gained 8 pounds in a month and snapped at everyone.",
    "Anyone else find the pill hard to swallow? It's huge.",
]


def json_contract(task: TaskDefinition, predicted: str) -> dict:
    return {
        "type": "object",
        "properties": {
            "verdict": {"type": "string", "enum": ["confirm", "reject"]},
            "label": {"type": "string", "enum": list(task.labels)},
            "evidence": {"type": "string", "maxLength": 160},
            "reason": {"type": "string", "maxLength": 200},
        },
        "required": ["verdict", "label", "evidence", "reason"],
    }


def json_messages(task: TaskDefinition, post: str, predicted: str) -> list[dict[str, str]]:
    messages = build_messages(task, post, predicted)
    messages[0]["content"] += ("\nAnswer as one JSON object with the keys verdict, label, evidence, reason "
                               "instead of four lines.")
    for m in messages[1:-1]:
        if m["role"] == "assistant":
            lines = dict(line.split(": ", 1) for line in m["content"].strip().splitlines())
            m["content"] = json.dumps({"verdict": lines["VERDICT"], "label": lines["LABEL"],
                                       "evidence": lines["EVIDENCE"].strip('"'), "reason": lines["REASON"]})
    return messages


def valid_json(reply: str, task: TaskDefinition, post: str, predicted: str) -> bool:
    try:
        data = json.loads(reply)
        four = (f'VERDICT: {data["verdict"]}\nLABEL: {data["label"]}\nEVIDENCE: "{data["evidence"]}"\n'
                f'REASON: {data["reason"]}\n')
        parse_reply(four, task, post, predicted)
        return True
    except (ValueError, KeyError, TypeError, ReplyError):
        return False


def main() -> None:
    from llama_cpp import Llama, LlamaGrammar

    from monitor.models import default_gguf_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="druglib_adverse")
    parser.add_argument("--posts", type=int, default=20)
    parser.add_argument("--gguf", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--n-gpu-layers", type=int, default=0)
    args = parser.parse_args()

    task = load_task(args.task)
    llm = Llama(model_path=str(args.gguf or default_gguf_path()), n_ctx=2048, n_threads=args.threads,
                n_gpu_layers=args.n_gpu_layers, seed=1234, verbose=False)
    cases = [(POSTS[i % len(POSTS)], task.labels[i % len(task.labels)]) for i in range(args.posts)]
    results = {}
    for name in ("json_schema", "minimal", "unconstrained"):
        valid, tokens, times = 0, 0, []
        for post, predicted in cases:
            if name == "json_schema":
                messages = json_messages(task, post, predicted)
                grammar = LlamaGrammar.from_json_schema(json.dumps(json_contract(task, predicted)), verbose=False)
            else:
                messages = build_messages(task, post, predicted)
                grammar = (LlamaGrammar.from_string(build_grammar(task, post, predicted), verbose=False)
                           if name == "minimal" else None)
            start = time.perf_counter()
            out = llm.create_chat_completion(messages=messages, grammar=grammar, temperature=0.0, seed=1234,
                                             max_tokens=200)
            times.append(time.perf_counter() - start)
            reply = out["choices"][0]["message"]["content"] or ""
            tokens += out["usage"]["completion_tokens"]
            if name == "json_schema":
                valid += valid_json(reply, task, sanitise_post(post), predicted)
            else:
                try:
                    parse_reply(reply, task, post, predicted)
                    valid += 1
                except ReplyError:
                    pass
        total = sum(times)
        results[name] = (len(cases) / total, valid / len(cases), tokens / total, statistics.median(times))
    base = results["json_schema"][0]
    print(f"task {task.name}, {len(cases)} explanations per contract, real prompts (rules + 2 examples)")
    print(f"{'contract':<14} {'expl/s':>8} {'valid':>7} {'tok/s':>7} {'p50 s':>6} {'vs json':>8}")
    for name, (rate, ok, tps, p50) in results.items():
        print(f"{name:<14} {rate:8.2f} {ok:7.0%} {tps:7.1f} {p50:6.2f} {rate / base:7.2f}x")


if __name__ == "__main__":
    main()
