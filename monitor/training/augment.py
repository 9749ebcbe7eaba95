"""Minority-class augmentation for the training split: small, label-preserving edits to about 10% of a post's words.

ALEX (Jiang et al. 2023) balances training data by adding edited copies of minority-class posts:
character substitutions, keyboard typos, synonym swaps and contractions. Everything here is pure:
randomness comes from an ``rng`` or a ``seed`` argument, and the same seed gives the same copies.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cache, partial
from typing import Any, Generic, Protocol, TypeVar

from monitor.errors import ConfigError, DataError
from monitor.training.wordnet import SynonymSource, WordNetSynonyms

log = logging.getLogger(__name__)

# A common English list plus its contractions and a few tweet fillers. Negations are in it on
# purpose: a typo or a "synonym" of "not" or "no" is the edit most likely to flip a label.
STOP_WORDS = frozenset(
    """
    a about above after again against ain all am an and any are aren't as at be because been before being below
    between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during each
    few for from further had hadn't has hasn't have haven't having he he'd he'll he's her here here's hers herself
    him himself his how how's i i'd i'll i'm i've if in into is isn't it it'd it'll it's its itself just let's
    me might mightn't more most must mustn't my myself need needn't no nor not now of off on once only or other
    ought our ours ourselves out over own same shan't she she'd she'll she's should shouldn't so some such than
    that that'll that's the their theirs them themselves then there there'll there's these they they'd they'll
    they're they've this those through to too under until up very was wasn't we we'd we'll we're we've were
    weren't what what's when when's where where's which while who who'll who's whom why why's will with won't
    would wouldn't you you'd you'll you're you've your yours yourself yourselves
    also get got im ive dont cant wont didnt doesnt isnt u ur ya yeah yes ok okay lol rt amp via
    """.split()
)

# Visual and OCR look-alikes (keys are lower case; a key of two letters is read as one glyph).
OCR_CONFUSIONS: dict[str, tuple[str, ...]] = {
    "a": ("o", "e"), "b": ("6", "h"), "c": ("e", "o"), "d": ("cl",), "e": ("c", "3"), "g": ("9", "q"),
    "h": ("b", "n"), "i": ("l", "1", "j"), "j": ("i",), "l": ("1", "i", "I"), "m": ("rn", "nn"),
    "n": ("h", "ri"), "o": ("0", "a"), "q": ("g", "9"), "r": ("n",), "s": ("5",), "t": ("f", "l"),
    "u": ("v", "n"), "v": ("u", "y"), "w": ("vv",), "y": ("v",), "z": ("2",),
    "rn": ("m",), "cl": ("d",), "vv": ("w",),
}

_QWERTY_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _qwerty_neighbours() -> dict[str, str]:
    # Each row sits half a key to the right of the one above, so key (r, c) touches (r-1, c),
    # (r-1, c+1), (r+1, c-1) and (r+1, c) besides its row neighbours.
    position = {key: (r, c) for r, row in enumerate(_QWERTY_ROWS) for c, key in enumerate(row)}
    neighbours: dict[str, str] = {}
    for key, (r, c) in position.items():
        around = [(r, c - 1), (r, c + 1), (r - 1, c), (r - 1, c + 1), (r + 1, c - 1), (r + 1, c)]
        neighbours[key] = "".join(
            _QWERTY_ROWS[rr][cc] for rr, cc in around if 0 <= rr < 3 and 0 <= cc < len(_QWERTY_ROWS[rr])
        )
    return neighbours


QWERTY_NEIGHBOURS = _qwerty_neighbours()

# (long form, contraction). Both directions, except _EXPAND_ONLY: "have"/"has"/"had" contract only
# as auxiliaries ("I have a fever" is not "I've a fever"), which one token of context cannot tell.
_CONTRACTIONS = (
    ("are not", "aren't"), ("cannot", "can't"), ("can not", "can't"), ("could not", "couldn't"),
    ("did not", "didn't"), ("does not", "doesn't"), ("do not", "don't"), ("is not", "isn't"),
    ("might not", "mightn't"), ("must not", "mustn't"), ("need not", "needn't"), ("should not", "shouldn't"),
    ("was not", "wasn't"), ("were not", "weren't"), ("will not", "won't"), ("would not", "wouldn't"),
    ("I am", "I'm"), ("I will", "I'll"), ("I would", "I'd"), ("you are", "you're"), ("you will", "you'll"),
    ("you would", "you'd"), ("we are", "we're"), ("we will", "we'll"), ("we would", "we'd"),
    ("they are", "they're"), ("they will", "they'll"), ("they would", "they'd"), ("he is", "he's"),
    ("he will", "he'll"), ("he would", "he'd"), ("she is", "she's"), ("she will", "she'll"),
    ("she would", "she'd"), ("it is", "it's"), ("it will", "it'll"), ("that is", "that's"),
    ("that will", "that'll"), ("there is", "there's"), ("what is", "what's"), ("who is", "who's"),
    ("where is", "where's"), ("here is", "here's"), ("how is", "how's"), ("let us", "let's"),
)
_EXPAND_ONLY = (
    ("have not", "haven't"), ("has not", "hasn't"), ("had not", "hadn't"), ("I have", "I've"),
    ("you have", "you've"), ("we have", "we've"), ("they have", "they've"),
)
_CONTRACT = {long.lower(): short for long, short in _CONTRACTIONS}
_EXPAND: dict[str, str] = {}
for _long, _short in _CONTRACTIONS + _EXPAND_ONLY:
    _EXPAND.setdefault(_short.lower(), _long)  # the first reading wins: "it's" -> "it is", not "it has"

# URLs, e-mail addresses, @mentions (SMM4H's @USER), hashtags, HTML entities and HTTPURL are kept
# whole; a word is a run of letters and digits with inner apostrophes ("don't"); hyphens split.
_TOKEN = re.compile(
    r"(?P<keep>(?:https?://|www\.)\S+|[\w.+-]+@[\w-]+\.[\w.-]+|[@#]\w+|&#?\w+;|\bHTTPURL\b)"
    r"|(?P<word>[^\W_]+(?:['\u2019][^\W_]+)*)"
)
_LETTERS_ONLY = re.compile(r"[^\W\d_]+(?:['\u2019][^\W\d_]+)*")
_PLAIN_SYNONYM = re.compile(r"[a-z]+(?:[-'][a-z]+)*")


class Failure(StrEnum):
    """Why an augmentation produced no new example."""

    NO_ELIGIBLE_WORD = "no_eligible_word"  # only stop words, URLs, numbers, ... for the enabled operators
    NOT_APPLICABLE = "operator_not_applicable"  # eligible words, but no operator could change any
    UNCHANGED = "unchanged"  # the edits gave back the input text
    DUPLICATE = "duplicate"  # same text as an existing post or an earlier copy


# -- operators: word (or phrase) in, changed word out, None when they do not apply ---------------------


def substitute_character(word: str, rng: random.Random) -> str | None:
    """Replace one glyph by a visual/OCR look-alike ("pain" -> "paln", "medicine" -> "rnedicine")."""
    lower = word.lower()
    spots = [(m.start(), key) for key in OCR_CONFUSIONS for m in re.finditer(f"(?={re.escape(key)})", lower)]
    if not spots:
        return None
    i, key = rng.choice(spots)
    original = word[i : i + len(key)]
    new = rng.choice(OCR_CONFUSIONS[key])
    return word[:i] + (new.upper() if original.isupper() else new) + word[i + len(key) :]


def keyboard_typo(word: str, rng: random.Random) -> str | None:
    """Replace one letter by a neighbouring key on a US QWERTY keyboard ("fever" -> "fecer")."""
    spots = [i for i, char in enumerate(word) if char.lower() in QWERTY_NEIGHBOURS]
    if not spots:
        return None
    i = rng.choice(spots)
    new = rng.choice(QWERTY_NEIGHBOURS[word[i].lower()])
    return word[:i] + (new.upper() if word[i].isupper() else new) + word[i + 1 :]


def swap_synonym(word: str, rng: random.Random, *, synonyms: SynonymSource, top: int = 5) -> str | None:
    """Replace the word by one of its ``top`` first synonyms, keeping its capitalisation.

    Only plain lower-case single words are used: WordNet's proper nouns and abbreviations ("MD",
    "Dr.") and multi-word lemmas would read as noise of another kind.
    """
    plain = word.replace("\u2019", "'")
    candidates = [
        s for s in synonyms.synonyms(plain.lower()) if _PLAIN_SYNONYM.fullmatch(s) and s != plain.lower()
    ]
    if not candidates:
        return None
    return _match_case(rng.choice(candidates[:top]), word)


def contract_or_expand(phrase: str, rng: random.Random) -> str | None:
    """ "do not" -> "don't", "don't" -> "do not", "it's" -> "it is": contraction both ways.

    ``phrase`` is one token (expanded) or two (contracted). Ambiguous contractions expand to their
    first reading ("he's" -> "he is"). ``rng`` is unused; it keeps the operator signature.
    """
    curly = "\u2019" in phrase
    key = " ".join(phrase.replace("\u2019", "'").split()).lower()
    new = _CONTRACT.get(key) or _EXPAND.get(key)
    if new is None:
        return None
    if curly:
        new = new.replace("'", "\u2019")
    if phrase.isupper() and sum(c.isalpha() for c in phrase) > 1:
        return new.upper()
    first = new[0].upper() if phrase[0].isupper() else new[0].lower()
    return first + new[1:]


@dataclass(frozen=True)
class Operator:
    """A named edit. ``words`` is how many adjacent words it may take as one phrase; an operator
    with ``function_words`` works on stop words (contractions are made of nothing else)."""

    name: str
    apply: Callable[[str, random.Random], str | None]
    words: int = 1
    function_words: bool = False


@cache
def _wordnet() -> WordNetSynonyms:
    return WordNetSynonyms()


def _swap_wordnet_synonym(word: str, rng: random.Random) -> str | None:
    return swap_synonym(word, rng, synonyms=_wordnet())


# The registry: an ablation turns an operator off by leaving its name out.
OPERATORS: dict[str, Operator] = {
    "char": Operator("char", substitute_character),
    "keyboard": Operator("keyboard", keyboard_typo),
    "synonym": Operator("synonym", _swap_wordnet_synonym),
    "contraction": Operator("contraction", contract_or_expand, words=2, function_words=True),
}
ALL_OPERATORS = tuple(OPERATORS)


def select_operators(
    operators: Iterable[str | Operator] = ALL_OPERATORS, *, synonyms: SynonymSource | None = None
) -> tuple[Operator, ...]:
    """Operators by name (or as given), in order, without repeats; ``synonyms`` replaces WordNet."""
    chosen: dict[str, Operator] = {}
    for item in operators:
        if isinstance(item, Operator):
            chosen[item.name] = item
            continue
        if item not in OPERATORS:
            raise ConfigError(f"unknown augmentation operator {item!r}; known: {', '.join(OPERATORS)}")
        operator = OPERATORS[item]
        if item == "synonym" and synonyms is not None:
            operator = dataclasses.replace(operator, apply=partial(swap_synonym, synonyms=synonyms))
        chosen[item] = operator
    if not chosen:
        raise ConfigError("no augmentation operator enabled")
    return tuple(chosen.values())


# -- one text --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Edit:
    """``text[start:end]`` (``before``, ``words`` words long) became ``after``."""

    start: int
    end: int
    before: str
    after: str
    operator: str
    words: int


@dataclass(frozen=True)
class AugmentOutcome:
    """The new text and its edits, or the reason there is none."""

    text: str | None
    failure: Failure | None = None
    edits: tuple[Edit, ...] = ()
    words: int = 0  # words in the input, the base of ``rate``

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclass(frozen=True)
class _Word:
    start: int
    end: int
    text: str
    letters: bool


def words_of(text: str) -> list[tuple[int, int, str]]:
    """The words ``augment_text`` counts, as (start, end, word); URLs, mentions and such are not words."""
    return [(w.start, w.end, w.text) for w in _words(text)]


def _words(text: str) -> list[_Word]:
    return [
        _Word(m.start(), m.end(), m.group(), bool(_LETTERS_ONLY.fullmatch(m.group())))
        for m in _TOKEN.finditer(text)
        if m.group("word")
    ]


def augment_text(
    text: str,
    *,
    rng: random.Random,
    operators: Sequence[str | Operator],
    rate: float = 0.1,
    stop_words: frozenset[str] = STOP_WORDS,
) -> AugmentOutcome:
    """Edit about ``rate`` of the words of ``text`` (at least one), each word at most once.

    The number of words to change is ``round(rate * words)``, at least 1. Words are visited in a
    random order; for each, an operator is drawn uniformly among the enabled ones that accept it
    (stop words: only contractions), and if it cannot change the word the others are tried in
    random order. A contraction may take two words ("do not"), so a text can get one word more
    than its quota. Everything outside the edited words is kept byte for byte.
    """
    if not 0 < rate <= 1:
        raise ValueError(f"rate must be in (0, 1], got {rate}")
    ops = select_operators(operators)
    words = _words(text)
    quota = max(1, math.floor(rate * len(words) + 0.5))
    sites = [i for i, word in enumerate(words) if any(_accepts(op, word, stop_words) for op in ops)]
    if not sites:
        return AugmentOutcome(None, Failure.NO_ELIGIBLE_WORD, words=len(words))
    rng.shuffle(sites)
    touched: set[int] = set()
    edits: list[Edit] = []
    changed = 0
    for i in sites:
        if changed >= quota:
            break
        if i in touched:
            continue
        candidates = [op for op in ops if _accepts(op, words[i], stop_words)]
        rng.shuffle(candidates)
        for op in candidates:
            found = _apply(op, text, words, i, touched, rng)
            if found is not None:
                first, last, edit = found
                edits.append(edit)
                touched.update(range(first, last + 1))
                changed += edit.words
                break
    if not edits:
        return AugmentOutcome(None, Failure.NOT_APPLICABLE, words=len(words))
    edits.sort(key=lambda e: e.start)
    pieces, position = [], 0
    for edit in edits:
        pieces += [text[position : edit.start], edit.after]
        position = edit.end
    new_text = "".join(pieces) + text[position:]
    if new_text == text:
        return AugmentOutcome(None, Failure.UNCHANGED, words=len(words))
    return AugmentOutcome(new_text, None, tuple(edits), len(words))


def _accepts(op: Operator, word: _Word, stop_words: frozenset[str]) -> bool:
    if not word.letters:
        return False  # numbers, "covid19", "2mg": an edit there changes a fact, not the wording
    return op.function_words or word.text.lower().replace("\u2019", "'") not in stop_words


def _apply(
    op: Operator, text: str, words: list[_Word], i: int, touched: set[int], rng: random.Random
) -> tuple[int, int, Edit] | None:
    # Longest phrases through word i first ("do not" before "not"); a phrase is words separated
    # by whitespace only, none of them edited already.
    spans = [(i - k, i - k + size - 1) for size in range(op.words, 0, -1) for k in range(size)]
    for first, last in spans:
        if first < 0 or last >= len(words):
            continue
        if any(j in touched or not words[j].letters for j in range(first, last + 1)):
            continue
        gaps = [text[words[j].end : words[j + 1].start] for j in range(first, last)]
        if any(not gap or gap.strip() for gap in gaps):
            continue
        before = text[words[first].start : words[last].end]
        after = op.apply(before, rng)
        if after is not None and after != before:
            return first, last, Edit(words[first].start, words[last].end, before, after, op.name, last - first + 1)
    return None


def _match_case(new: str, old: str) -> str:
    if old.isupper() and len(old) > 1:
        return new.upper()
    if old[:1].isupper():
        return new[:1].upper() + new[1:]
    return new


# -- a training split ------------------------------------------------------------------------------


class Example(Protocol):
    """What augmentation needs of a training example (``monitor.training.data.Example`` has it)."""

    @property
    def id(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def label(self) -> str: ...


E = TypeVar("E", bound=Example)


@dataclass(frozen=True)
class AugmentResult(Generic[E]):
    """The new copies (``added``; the caller appends them to its split) and an account of every
    copy asked for.

    ``made[label] + failed_by_label[label] == copies * examples of label`` for each minority class:
    a copy that could not be made is counted in ``failures`` by the reason of its last attempt.
    ``retries`` counts attempts that failed (duplicates) and were tried again with another draw.
    """

    added: list[E]
    minority: frozenset[str]
    made: Counter[str]
    failures: Counter[str]
    failed_by_label: Counter[str]
    retries: Counter[str]

    def summary(self) -> str:
        made = ", ".join(f"{label} {n}" for label, n in sorted(self.made.items())) or "none"
        line = f"augmented {sorted(self.minority)}: made {sum(self.made.values())} copies ({made})"
        if self.failures:
            reasons = ", ".join(f"{reason} {n}" for reason, n in self.failures.most_common())
            line += f"; {sum(self.failures.values())} not made ({reasons})"
        return line


def minority_classes(labels: Iterable[str]) -> frozenset[str]:
    """Every class with fewer examples than the largest one."""
    counts = Counter(labels)
    top = max(counts.values(), default=0)
    return frozenset(label for label, n in counts.items() if n < top)


def augment_minority(
    examples: Sequence[E],
    *,
    copies: int,
    seed: int,
    operators: Iterable[str | Operator] = ALL_OPERATORS,
    rate: float = 0.1,
    minority: Iterable[str] | None = None,
    synonyms: SynonymSource | None = None,
    stop_words: frozenset[str] = STOP_WORDS,
    attempts: int = 3,
) -> AugmentResult[E]:
    """Add ``copies`` augmented copies of each example of a minority class (training split only).

    ``minority`` defaults to :func:`minority_classes`. Copy ``k`` (1-based) of example ``x`` gets id
    ``f"{x.id}#aug{k}"``, the same label, and is drawn from its own generator seeded by
    (``seed``, id, k), so the copies do not depend on the order of ``examples``. A copy equal to
    any text already present is drawn again, up to ``attempts`` draws in all. Examples are
    rebuilt with ``dataclasses.replace`` (or ``_replace``/``model_copy``), keeping their type.
    """
    if copies < 0:
        raise ValueError(f"copies must be >= 0, got {copies}")
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    ops = select_operators(operators, synonyms=synonyms)
    present = Counter(example.label for example in examples)
    targets = minority_classes(present) if minority is None else frozenset(minority)
    absent = sorted(targets - present.keys())
    if absent:
        raise DataError(f"no examples of class {', '.join(map(repr, absent))} to augment")

    seen = {example.text for example in examples}
    made: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    failed_by_label: Counter[str] = Counter()
    retries: Counter[str] = Counter()
    copies_of: dict[int, list[E]] = {}
    # By id, so that which of two identical copies is the duplicate does not depend on the order.
    order = sorted((i for i, x in enumerate(examples) if x.label in targets), key=lambda i: str(examples[i].id))
    for i in order:
        example = examples[i]
        for k in range(1, copies + 1):
            new, failed = _one_copy(example, k, seed, ops, rate, stop_words, attempts, seen)
            if new is not None:
                copies_of.setdefault(i, []).append(new)
                made[example.label] += 1
                retries.update(failed)
            else:
                retries.update(failed[:-1])
                failures[failed[-1]] += 1
                failed_by_label[example.label] += 1
    added = [new for i in sorted(copies_of) for new in copies_of[i]]
    result = AugmentResult(added, targets, made, failures, failed_by_label, retries)
    log.log(logging.WARNING if failures else logging.INFO, "%s", result.summary())
    return result


def _one_copy(
    example: E,
    k: int,
    seed: int,
    ops: tuple[Operator, ...],
    rate: float,
    stop_words: frozenset[str],
    attempts: int,
    seen: set[str],
) -> tuple[E | None, list[Failure]]:
    """The copy (or None) and the reasons its failed attempts gave, last one last."""
    failed: list[Failure] = []
    for attempt in range(attempts):
        # A string seed is hashed with SHA-512: stable across runs, unlike hash().
        rng = random.Random(f"{seed}|{example.id}|{k}|{attempt}")
        outcome = augment_text(example.text, rng=rng, operators=ops, rate=rate, stop_words=stop_words)
        reason = outcome.failure or (Failure.DUPLICATE if outcome.text in seen else None)
        if reason is None and outcome.text is not None:
            seen.add(outcome.text)
            return _rebuild(example, id=f"{example.id}#aug{k}", text=outcome.text), failed
        failed.append(reason or Failure.UNCHANGED)
        # Only another draw can fix a duplicate; the other failures are the text's own.
        if reason not in (Failure.DUPLICATE, Failure.UNCHANGED):
            break
    return None, failed


def _rebuild(example: E, **changes: Any) -> E:
    if dataclasses.is_dataclass(example) and not isinstance(example, type):
        return dataclasses.replace(example, **changes)
    if hasattr(example, "_replace"):  # NamedTuple
        return example._replace(**changes)
    if hasattr(example, "model_copy"):  # pydantic
        return example.model_copy(update=changes)
    raise TypeError(f"cannot copy a {type(example).__name__}: use a dataclass, NamedTuple or pydantic model")
