"""Where the explainer's evidence sits in a post, so a page can mark it. Pure; escaping is the template's.

The explainer quotes a line of the post; the stored text may differ from the quote in case or spacing
(normalisation), so an exact match is tried first, then one that ignores case and runs of whitespace.
"""

from __future__ import annotations

import re


def split_evidence(text: str, evidence: str | None) -> tuple[str, str, str] | None:
    """``(before, quote, after)`` with ``quote`` the evidence as it appears in ``text``; None when absent."""
    if not evidence or not evidence.strip():
        return None
    quote = evidence.strip()
    start = text.find(quote)
    if start >= 0:
        return text[:start], text[start:start + len(quote)], text[start + len(quote):]
    words = quote.split()
    pattern = re.compile(r"\s+".join(re.escape(word) for word in words), re.IGNORECASE)
    match = pattern.search(text)
    if match is None:
        return None
    return text[:match.start()], match.group(0), text[match.end():]
