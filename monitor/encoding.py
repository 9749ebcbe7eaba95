"""Text to token ids, identically at training and inference: head+tail truncation, char pre-cut.

Long posts keep their beginning and their end (Sun et al. 2019 found head+tail the best cut for
BERT-style classifiers: the conclusion of a post often carries the signal). Texts are cut by
characters first, so a 1 MB post never reaches the tokenizer whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

Truncation = Literal["head", "head_tail"]

# Generous: English averages about 4-5 characters per word piece; 8 per token leaves margin.
_CHARS_PER_TOKEN = 8


def precut(text: str, max_length: int, truncation: Truncation, head_fraction: float) -> str:
    """Cut ``text`` by characters to what can matter for ``max_length`` tokens."""
    limit = max_length * _CHARS_PER_TOKEN
    if len(text) <= limit:
        return text
    if truncation == "head":
        return text[:limit]
    head = int(limit * head_fraction)
    return text[:head] + " " + text[len(text) - (limit - head):]


def encode(
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int,
    truncation: Truncation = "head_tail",
    head_fraction: float = 0.25,
) -> list[list[int]]:
    """Token ids with special tokens, at most ``max_length`` each; no padding (batches pad themselves)."""
    cut = [precut(t, max_length, truncation, head_fraction) for t in texts]
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    pieces = tokenizer(cut, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    encoded = []
    for ids in pieces:
        if len(ids) > budget:
            if truncation == "head":
                ids = ids[:budget]
            else:
                head = int(budget * head_fraction)
                ids = ids[:head] + ids[len(ids) - (budget - head):]
        encoded.append(tokenizer.build_inputs_with_special_tokens(ids))
    return encoded


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), so padding is minimal."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
