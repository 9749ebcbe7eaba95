"""Synonyms for the augmentation, offline: WordNet 3.0 read straight from its plain database files.

Debian's ``wordnet-base`` puts the files in /usr/share/wordnet. Nothing is parsed up front: the
index and data files are memory-mapped and looked up by binary search and byte offset, so a
lookup costs a few page reads and the files live in the OS page cache, not the Python heap.
"""

from __future__ import annotations

import mmap
import re
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from monitor.errors import DataError

DEFAULT_PATH = Path("/usr/share/wordnet")

POS_TAGS = ("n", "v", "a", "r")
_POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
# Sense keys in cntlist.rev number the parts of speech; 5 is an adjective satellite (index.adj).
_SENSE_KEY_POS = {b"1": "n", b"2": "v", b"3": "a", b"4": "r", b"5": "a"}

# WordNet's own morphy rules (morph.c): (inflected ending, base ending), tried in this order.
_SUFFIX_RULES: dict[str, tuple[tuple[str, str], ...]] = {
    "n": (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
          ("men", "man"), ("ies", "y")),
    "v": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"),
          ("ing", "")),
    "a": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "r": (),
}
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")
_VOWELS = "aeiou"


class SynonymSource(Protocol):
    """Anything that can propose synonyms for a word (WordNet here; a dict in tests)."""

    def synonyms(self, word: str, pos: str | None = None) -> Sequence[str]:
        """Synonyms of ``word``, best first; ``pos`` is one of n, v, a, r or None for any."""
        ...


class TableSynonyms:
    """A fixed word -> synonyms table as a :class:`SynonymSource` (tests, domain lists)."""

    def __init__(self, table: Mapping[str, Sequence[str]]) -> None:
        self._table = {word.lower(): tuple(syns) for word, syns in table.items()}

    def synonyms(self, word: str, pos: str | None = None) -> Sequence[str]:
        return self._table.get(word.lower(), ())


class WordNetSynonyms:
    """Synonyms from WordNet 3.0: single-word lemmas of the word's synsets, most frequent sense first.

    Senses are ranked by their tag count in WordNet's semantic concordance (cntlist.rev), then by
    WordNet's own sense order, so with ``pos=None`` "good" yields adjective synonyms before the
    noun sense "commodity". Inflected words are reduced with the ``*.exc`` exception lists and
    morphy's suffix rules ("pills" -> "pill"). With ``reinflect`` (default), synonyms of a regularly
    inflected noun or verb get the same ending, crudely ("pills" -> "tablets", "stopped" ->
    "halted"); those of an irregular form or an adjective comparative stay in their base form
    ("took" -> "get", not "got"), and a synonym whose own form would be irregular is left out
    rather than given a wrong ending ("tired" never gives "weared"). Multi-word lemmas
    ("birth control pill") are left out unless ``multiword``; then their underscores become spaces.
    """

    def __init__(self, path: Path = DEFAULT_PATH, *, multiword: bool = False, reinflect: bool = True) -> None:
        path = Path(path)
        missing = [name for name in self._file_names() if not (path / name).is_file()]
        if missing:
            raise DataError(
                f"WordNet not found in {path} (missing {', '.join(missing[:3])}"
                f"{', ...' if len(missing) > 3 else ''}): install Debian's wordnet-base "
                "(deploy/local/setup.sh does) or pass another synonym source"
            )
        self.path = path
        self.multiword = multiword
        self.reinflect = reinflect
        self._maps: dict[str, mmap.mmap] = {}
        self._exceptions: dict[str, dict[str, tuple[str, ...]]] = {}
        self._irregulars: dict[str, dict[str, frozenset[str]]] = {}
        # Per instance, so that two sources with different options never share answers.
        self._cached = lru_cache(maxsize=1 << 16)(self._lookup)

    @staticmethod
    def _file_names() -> Iterator[str]:
        for name in _POS_FILES.values():
            yield f"index.{name}"
            yield f"data.{name}"
            yield f"{name}.exc"
        yield "cntlist.rev"

    def synonyms(self, word: str, pos: str | None = None) -> list[str]:
        if pos is not None and pos not in POS_TAGS and pos != "s":
            raise ValueError(f"pos must be one of {', '.join(POS_TAGS)} or None, got {pos!r}")
        key = word.strip().lower().replace(" ", "_").replace("\u2019", "'")
        if not key:
            return []
        return list(self._cached(key, "a" if pos == "s" else pos))

    def base_forms(self, word: str, pos: str) -> list[tuple[str, str | None]]:
        """Lemmas in WordNet for ``word`` as ``pos``, each with the ending ``word`` has on it.

        The ending is a suffix rule's ("pills" -> ("pill", "s")), or for a regular-looking form from
        the exception list its last letters ("stopped" -> ("stop", "ed")); it is ``None`` for the
        word itself, an irregular form ("took" -> ("take", None)) and adjectives.
        """
        found: list[tuple[str, str | None]] = []
        seen: set[str] = set()

        def add(base: str, ending: str | None) -> None:
            if base not in seen and self._index_line(pos, base) is not None:
                seen.add(base)
                found.append((base, ending))

        add(word, None)
        for base in self._exception_table(pos).get(word, ()):
            add(base, _ending_of(word) if pos in ("n", "v") else None)
        for ending, replacement in _SUFFIX_RULES[pos]:
            if word.endswith(ending) and len(word) > len(ending) + 1:
                add(word[: len(word) - len(ending)] + replacement, ending if pos in ("n", "v") else None)
        return found

    # -- lookup ------------------------------------------------------------------------------------

    def _lookup(self, key: str, pos: str | None) -> tuple[str, ...]:
        senses: list[tuple[int, int, int, str, int, str | None]] = []  # (-count, rank, pos order, ...)
        excluded = {key}
        for order, tag in enumerate(POS_TAGS if pos is None else (pos,)):
            for base, rule in self.base_forms(key, tag):
                excluded.add(base)
                counts = self._tag_counts(base)
                offsets = self._index_line(tag, base) or ()
                for rank, offset in enumerate(offsets, start=1):
                    senses.append((-counts.get((tag, rank), 0), rank, order, tag, offset, rule))
        result: list[str] = []
        for *_, tag, offset, rule in sorted(senses, key=lambda sense: sense[:3]):
            for lemma in self._synset_lemmas(tag, offset):
                if "_" in lemma:
                    if not self.multiword:
                        continue
                    lemma = lemma.replace("_", " ")
                if lemma.lower() in excluded:
                    continue
                if rule is not None and self.reinflect:
                    if " " in lemma:
                        continue  # "birth control pill" + s: the ending belongs on the head word
                    form = inflect(lemma, rule)
                    irregular = self._irregular_forms(tag).get(lemma, ())
                    if form not in irregular and any(_same_slot(tag, rule, known) for known in irregular):
                        continue  # "wear" + ed is "wore", which the rules cannot make: leave it out
                    lemma = form
                if lemma.lower() != key and lemma not in result:
                    result.append(lemma)
        return tuple(result)

    def _index_line(self, pos: str, lemma: str) -> tuple[int, ...] | None:
        """Synset offsets of ``lemma`` in WordNet's sense order (most frequent first), or None."""
        line = _find_line(self._map(f"index.{_POS_FILES[pos]}"), lemma.encode("utf-8"))
        if line is None:
            return None
        fields = line.split()
        # lemma pos synset_cnt p_cnt [ptr_symbol...] sense_cnt tagsense_cnt synset_offset...
        try:
            synset_count, pointer_count = int(fields[2]), int(fields[3])
            return tuple(int(f) for f in fields[6 + pointer_count : 6 + pointer_count + synset_count])
        except (IndexError, ValueError) as exc:
            raise DataError(f"{self.path / ('index.' + _POS_FILES[pos])}: malformed line for {lemma!r}") from exc

    def _synset_lemmas(self, pos: str, offset: int) -> list[str]:
        name = f"data.{_POS_FILES[pos]}"
        data = self._map(name)
        end = data.find(b"\n", offset)
        fields = data[offset : end if end != -1 else len(data)].split(b"|", 1)[0].split()
        # synset_offset lex_filenum ss_type w_cnt(hex) word lex_id [word lex_id...] ...
        try:
            if int(fields[0]) != offset:
                raise ValueError("offset mismatch")
            count = int(fields[3], 16)
            words = fields[4 : 4 + 2 * count : 2]
        except (IndexError, ValueError) as exc:
            raise DataError(f"{self.path / name}: no synset at byte offset {offset}") from exc
        return [_ADJ_MARKER.sub("", w.decode("utf-8", "replace")) for w in words]

    def _tag_counts(self, lemma: str) -> dict[tuple[str, int], int]:
        """(pos, sense number) -> times tagged in the concordance; absent senses were never tagged."""
        data = self._map("cntlist.rev")
        prefix = lemma.encode("utf-8") + b"%"
        counts: dict[tuple[str, int], int] = {}
        start = _lower_bound(data, prefix)
        while data[start : start + len(prefix)] == prefix:
            end = data.find(b"\n", start)
            end = len(data) if end == -1 else end
            sense_key, number, count = data[start:end].split()
            tag = _SENSE_KEY_POS.get(sense_key[len(prefix) : len(prefix) + 1])
            if tag is not None:
                counts[(tag, int(number))] = counts.get((tag, int(number)), 0) + int(count)
            start = end + 1
        return counts

    def _irregular_forms(self, pos: str) -> dict[str, frozenset[str]]:
        """Base form -> its forms in the exception list ("wear": {"wore", "worn"})."""
        forms = self._irregulars.get(pos)
        if forms is None:
            collected: dict[str, set[str]] = {}
            for inflected, bases in self._exception_table(pos).items():
                for base in bases:
                    collected.setdefault(base, set()).add(inflected)
            forms = {base: frozenset(found) for base, found in collected.items()}
            self._irregulars[pos] = forms
        return forms

    def _exception_table(self, pos: str) -> dict[str, tuple[str, ...]]:
        table = self._exceptions.get(pos)
        if table is None:
            table = {}
            file = self.path / f"{_POS_FILES[pos]}.exc"
            for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
                inflected, *bases = line.split()
                if bases:
                    table[inflected] = tuple(bases)
            self._exceptions[pos] = table
        return table

    def _map(self, name: str) -> mmap.mmap:
        mapped = self._maps.get(name)
        if mapped is None:
            try:
                with open(self.path / name, "rb") as file:
                    mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as exc:  # ValueError: an empty file cannot be mapped
                raise DataError(f"cannot read WordNet file {self.path / name}: {exc}") from exc
            self._maps[name] = mapped
        return mapped


def inflect(word: str, ending: str) -> str:
    """Put a regular English ``ending`` (s, es, ies, ed, ing, ...) on a one-word base form, crudely.

    Irregular forms come out regular ("run" + ed -> "runned"); the lookup checks a synonym against
    the exception lists before using this.
    """
    lower = word.lower()
    if ending in ("s", "es", "ses", "xes", "zes", "ches", "shes", "ies", "men"):
        if lower.endswith("man") and ending == "men":
            return word[:-3] + "men"
        if lower.endswith(("s", "x", "z", "ch", "sh")):
            return word + "es"
        if lower.endswith("y") and len(lower) > 1 and lower[-2] not in _VOWELS:
            return word[:-1] + "ies"
        return word + "s"
    if ending in ("ed", "ing"):
        if lower.endswith("e") and not lower.endswith("ee"):
            return word + "d" if ending == "ed" else word[:-1] + "ing"
        if ending == "ed" and lower.endswith("y") and len(lower) > 1 and lower[-2] not in _VOWELS:
            return word[:-1] + "ied"
        if _doubles_final_consonant(lower):
            return word + word[-1] + ending
        return word + ending
    return word + ending


def _ending_of(word: str) -> str | None:
    # The regular ending an exception-list form seems to carry: "stopped" -> "ed", "took" -> None.
    for ending in ("ing", "ed", "s"):
        if word.endswith(ending) and len(word) > len(ending) + 1:
            return ending
    return None


def _same_slot(pos: str, ending: str, form: str) -> bool:
    # Whether an exception-list form fills the slot ``ending`` would: a noun's are all plurals;
    # a verb's "-ing", "-s" and the rest (past tense and participle) are told apart by their end.
    if pos == "n":
        return True
    if ending == "ing":
        return form.endswith("ing")
    if ending == "ed":
        return not form.endswith(("ing", "s"))
    return form.endswith("s")


def _doubles_final_consonant(word: str) -> bool:
    # One syllable ending consonant-vowel-consonant: "stop" -> "stopping", "open" -> "opening".
    vowel_groups = len(re.findall(r"[aeiou]+", word))
    return (
        len(word) >= 3
        and vowel_groups == 1
        and word[-1] not in _VOWELS + "wxy"
        and word[-2] in _VOWELS
        and word[-3] not in _VOWELS
    )


def _lower_bound(data: mmap.mmap | bytes, key: bytes) -> int:
    """Start of the first line whose text is >= ``key``, in a file of byte-sorted lines.

    The comparison is on the line's first ``len(key)`` bytes against ``key``, which for a key that
    ends in a separator (b"pill ", b"good%") is the order the WordNet files are sorted in. The
    licence header lines start with two spaces and so sort before every lemma.
    """
    lo, hi = 0, len(data)
    while lo < hi:
        mid = (lo + hi) // 2
        start = data.rfind(b"\n", lo, mid) + 1 or lo
        end = data.find(b"\n", start)
        end = len(data) if end == -1 else end
        if data[start : min(end, start + len(key))] < key:
            lo = end + 1
        else:
            hi = start
    return lo


def _find_line(data: mmap.mmap | bytes, lemma: bytes) -> bytes | None:
    key = lemma + b" "
    start = _lower_bound(data, key)
    if data[start : start + len(key)] != key:
        return None
    end = data.find(b"\n", start)
    return data[start : end if end != -1 else len(data)]
