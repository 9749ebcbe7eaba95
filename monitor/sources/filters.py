"""Which platform posts a source sends on: languages, keywords and hashtags, a sample. Pure.

Every verdict is a reason code, so the source can count what each filter dropped.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

KEPT = "kept"
DROPPED = ("dropped_language", "dropped_keyword", "dropped_sample")
_TERM_CHARS = 100


def _term_pattern(term: str) -> str:
    """A whole-word, case-insensitive pattern: ``vaccin*`` matches a word's start, spaces any white space."""
    term = term.strip().lower()
    prefix = term.endswith("*")
    words = term.rstrip("*").split()
    pattern = r"[\s-]+".join(re.escape(w) for w in words)
    return pattern + (r"\w*" if prefix else "")


@dataclass(frozen=True)
class PostFilter:
    """Keep a post when its language is wanted, it names a term, and its id falls in the sample.

    ``languages`` are primary subtags (``en`` keeps ``en-GB``); a post that declares no language is kept,
    since many clients never set one. No ``terms``: every post passes the keyword test.
    """

    languages: frozenset[str] = frozenset()
    terms: tuple[str, ...] = ()
    sample_rate: float = 1.0
    pattern: re.Pattern[str] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if not 0 < self.sample_rate <= 1:
            raise ValueError("sample_rate must be in (0, 1]")
        for term in self.terms:
            if not term.strip("*# ") or len(term) > _TERM_CHARS:
                raise ValueError(f"a keyword is 1-{_TERM_CHARS} characters, got {term!r}")
        alternatives = "|".join(sorted({_term_pattern(t) for t in self.terms}, key=len, reverse=True))
        # (?<!\w) rather than \b: a term may start with '#', which \b would not match after a space.
        compiled = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE) if self.terms else None
        object.__setattr__(self, "pattern", compiled)  # frozen: set once, here

    def verdict(self, post_id: str, text: str, *, langs: Iterable[str] = (), tags: Iterable[str] = ()) -> str:
        """``kept`` or the first filter that dropped the post (``dropped_language``, ``_keyword``, ``_sample``)."""
        if self.languages:
            declared = {lang.split("-")[0].lower() for lang in langs if lang}
            if declared and not declared & self.languages:
                return "dropped_language"
        if self.pattern is not None:
            # Hashtags of the platform's own markup count as written '#tag', whether or not the text shows them.
            haystack = text + "\n" + " ".join(f"#{t.lstrip('#')}" for t in tags)
            if not self.pattern.search(haystack):
                return "dropped_keyword"
        if self.sample_rate < 1 and sample_point(post_id) >= self.sample_rate:
            return "dropped_sample"
        return KEPT


def sample_point(post_id: str) -> float:
    """A post's place in [0, 1): a hash of its id, so a post redelivered or replayed is sampled alike."""
    digest = hashlib.blake2b(post_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def build_filter(languages: Iterable[str], keywords: Iterable[str], sample_rate: float) -> PostFilter:
    """A filter from settings-shaped values (languages lowercased to their primary subtag, terms de-duplicated)."""
    terms = tuple(dict.fromkeys(k.strip() for k in keywords if k.strip()))
    return PostFilter(frozenset(lang.split("-")[0].lower() for lang in languages if lang.strip()), terms, sample_rate)
