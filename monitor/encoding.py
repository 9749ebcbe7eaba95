"""Text to token ids, identically at training and inference: one normalisation, head+tail
truncation, char pre-cut.

Long posts keep their beginning and their end (Sun et al. 2019 found head+tail the best cut for
BERT-style classifiers: the conclusion of a post often carries the signal). Texts are cut by
characters first, so a 1 MB post never reaches the tokenizer whole.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Sequence
from typing import Any, Literal

_URL = re.compile(r"(?:\bhttps?://|\bwww\.)[^\s<>\"]+", re.IGNORECASE)
_URL_TAIL = ".,;:!?)]}'"
_MENTION = re.compile(r"(?<![\w@])@\w+|(?<![\w/])/?u/[\w-]+")
# Printable ASCII and ordinary line breaks never need a category look-up; everything else might be
# a control (-> space) or a format/zero-width/surrogate character (-> removed).
_SUSPECT = re.compile(r"[^\x20-\x7e\t\n\r]")


def _drop_invisible(match: re.Match[str]) -> str:
    category = unicodedata.category(match.group())
    if category == "Cc":
        return " "
    if category in ("Cf", "Cs"):
        return ""
    return match.group()


def _url_token(match: re.Match[str]) -> str:
    url = match.group()
    kept = url.rstrip(_URL_TAIL)
    # Sentence punctuation after a link ("see http://x.org).") is not part of it; keep it.
    return "HTTPURL" + url[len(kept):] if kept else url


def _unescape(text: str) -> str:
    # Scraped text is often escaped twice ("&amp;lt;"); undo it all, or a second pass would differ.
    while True:
        unescaped = html.unescape(text)
        if unescaped == text:
            return text
        text = unescaped


def _normalise_once(text: str) -> str:
    text = unicodedata.normalize("NFKC", _unescape(unicodedata.normalize("NFKC", text)))
    text = _SUSPECT.sub(_drop_invisible, text)
    # The patterns start with look-behinds that the regex engine tries at every position; a plain
    # substring test first makes the common case (no link, no mention) several times faster.
    if "://" in text or "www." in text.lower():
        text = _URL.sub(_url_token, text)
    if "@" in text or "u/" in text:
        text = _MENTION.sub("@USER", text)
    return " ".join(text.split())


def normalise_text(text: str) -> str:
    """The one text normalisation, for real and augmented rows and for posts at inference.

    HTML entities unescaped, NFKC, control characters to spaces, zero-width/format characters
    removed, URLs -> ``HTTPURL``, @mentions and Reddit ``u/`` names -> ``@USER``, whitespace
    collapsed. Idempotent: ``normalise_text(normalise_text(t)) == normalise_text(t)``.
    """
    for _ in range(8):
        again = _normalise_once(text)
        if again == text:
            return text
        text = again
    return text  # real input settles after one or two changing passes; the bound guards against a cycle


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
