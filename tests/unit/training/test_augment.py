"""Augmentation: each operator's edits, the word budget, what is never touched, and the minority copies."""

import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple

import pytest

from monitor.errors import MonitorError

from monitor.training.augment import (
    ALL_OPERATORS,
    OPERATORS,
    QWERTY_NEIGHBOURS,
    Operator,
    STOP_WORDS,
    Failure,
    augment_minority,
    augment_text,
    contract_or_expand,
    keyboard_typo,
    minority_classes,
    select_operators,
    substitute_character,
    swap_synonym,
    words_of,
)
from monitor.training.wordnet import DEFAULT_PATH, TableSynonyms

POSTS = [
    "Took 2 ibuprofen for this headache and now my stomach is killing me. I don't think I can work today @USER HTTPURL",
    "Day 3 on sertraline: the nausea is not as bad, but I am still so dizzy and tired #mentalhealth",
    "My doctor switched me to a new blood pressure pill and it's making me cough all night... anyone else?",
    "Got my flu shot today, arm is sore but otherwise feeling fine. https://t.co/xyz &amp; thanks CVS",
    "Do not take melatonin with wine. I did not sleep at all and my head was pounding the next morning!!",
]
SYNONYMS = TableSynonyms(
    {
        word: ["alpha", "beta", "gamma", "delta"]
        for word in "took headache stomach killing think work day nausea bad dizzy tired doctor switched new blood "
        "pressure pill making cough night shot arm sore feeling fine take sleep head pounding morning".split()
    }
)
RATE = 0.1


@dataclass(frozen=True)
class Post:
    id: str
    text: str
    label: str
    source: str = "twitter"


def ops(name):
    return select_operators([name], synonyms=SYNONYMS)


def apply_edits(text, edits):
    out, position = [], 0
    for edit in sorted(edits, key=lambda e: e.start):
        assert edit.start >= position, "edits overlap"
        assert text[edit.start : edit.end] == edit.before
        out += [text[position : edit.start], edit.after]
        position = edit.end
    return "".join(out) + text[position:]


def is_stop(word):
    return word.lower().replace("\u2019", "'") in STOP_WORDS


# -- properties every operator must have -----------------------------------------------------------


@pytest.mark.parametrize("name", ALL_OPERATORS)
def test_edits_are_the_only_change_and_stay_within_the_budget(name):
    for post in POSTS:
        for seed in range(20):
            outcome = augment_text(post, rng=random.Random(seed), operators=ops(name), rate=RATE)
            if not outcome.ok:
                assert name == "contraction" and outcome.failure is Failure.NOT_APPLICABLE
                continue
            # The edits explain the whole difference: everything between them is byte-identical.
            assert apply_edits(post, outcome.edits) == outcome.text != post
            n = len(words_of(post))
            changed = sum(edit.words for edit in outcome.edits)
            assert 1 <= changed <= math.ceil(RATE * n) + 1, (post, outcome.edits)
            assert {e.operator for e in outcome.edits} == {name}
            for kept in ("@USER", "HTTPURL", "#mentalhealth", "https://t.co/xyz", "&amp;"):
                assert post.count(kept) == outcome.text.count(kept)
            # Numbers are facts: they stay (the OCR operator may add digits inside words: "p1ll").
            assert Counter(re.findall(r"\b\d+\b", post)) <= Counter(re.findall(r"\b\d+\b", outcome.text))


@pytest.mark.parametrize("name", ["char", "keyboard", "synonym"])
def test_word_operators_change_whole_words_one_for_one_and_never_stop_words(name):
    for post in POSTS:
        for seed in range(20):
            outcome = augment_text(post, rng=random.Random(seed), operators=ops(name), rate=RATE)
            before, after = post.split(" "), outcome.text.split(" ")
            assert len(before) == len(after)
            differing = [(b, a) for b, a in zip(before, after) if b != a]
            assert 1 <= len(differing) <= math.ceil(RATE * len(words_of(post))) + 1
            for b, a in differing:
                # Same punctuation around the word: only the word itself changed.
                strip = re.compile(r"^\W*|\W*$")
                assert strip.findall(b) == strip.findall(a), (b, a)
            for edit in outcome.edits:
                assert not is_stop(edit.before) and re.fullmatch(r"[^\W\d_]+(?:'[^\W\d_]+)*", edit.before)


def test_contractions_touch_only_function_words_of_their_table():
    seen = set()
    for post in POSTS:
        for seed in range(20):
            outcome = augment_text(post, rng=random.Random(seed), operators=ops("contraction"))
            for edit in outcome.edits:
                assert all(is_stop(word) for word in edit.before.split()), edit
                assert contract_or_expand(edit.before, random.Random(0)) == edit.after
                seen.add(edit.before)
    assert {"don't", "Do not", "did not", "is not", "I am", "it's"} <= seen


@pytest.mark.parametrize("name", ALL_OPERATORS)
def test_deterministic_under_a_seed_and_different_across_seeds(name):
    post = POSTS[4]
    first = augment_text(post, rng=random.Random(11), operators=ops(name), rate=0.3)
    again = augment_text(post, rng=random.Random(11), operators=ops(name), rate=0.3)
    assert first == again
    if name != "contraction":  # only two sites ("Do not", "did not"): a few seeds may agree
        texts = {augment_text(post, rng=random.Random(s), operators=ops(name), rate=0.3).text for s in range(6)}
        assert len(texts) >= 4


@pytest.mark.parametrize("name", ALL_OPERATORS)
def test_labels_are_kept_and_copies_counted_for_each_operator(name):
    examples = [Post(f"p{i}", text, "ade" if i < 2 else "none") for i, text in enumerate(POSTS)]
    result = augment_minority(examples, copies=2, seed=5, operators=[name], synonyms=SYNONYMS)
    by_id = {x.id: x for x in examples}
    for copy in result.added:
        source = by_id[copy.id.split("#aug")[0]]
        assert copy.label == source.label == "ade" and copy.source == "twitter" and copy.text != source.text
    assert result.made["ade"] + result.failed_by_label["ade"] == 4


# -- the word budget --------------------------------------------------------------------------------


def test_rate_sets_the_number_of_changed_words():
    text = " ".join(["fever", "cough", "rash", "headache", "nausea"] * 8)
    for rate, expected in ((0.1, 4), (0.25, 10), (0.01, 1)):
        outcome = augment_text(text, rng=random.Random(1), operators=["keyboard"], rate=rate)
        assert sum(e.words for e in outcome.edits) == expected
    with pytest.raises(ValueError):
        augment_text(text, rng=random.Random(1), operators=["keyboard"], rate=0)


def test_a_word_is_never_edited_twice():
    text = "fever cough"
    outcome = augment_text(text, rng=random.Random(0), operators=["char", "keyboard"], rate=1.0)
    assert [e.before for e in sorted(outcome.edits, key=lambda e: e.start)] == ["fever", "cough"]


def test_posts_with_nothing_to_edit_fail_with_a_reason():
    only_stop = "and then it was all of the same to me"
    assert augment_text(only_stop, rng=random.Random(0), operators=["char", "keyboard"]).failure is (
        Failure.NO_ELIGIBLE_WORD
    )
    assert augment_text(only_stop, rng=random.Random(0), operators=ALL_OPERATORS).failure is Failure.NOT_APPLICABLE
    assert augment_text("@USER HTTPURL 100mg 2x", rng=random.Random(0), operators=ALL_OPERATORS).failure is (
        Failure.NO_ELIGIBLE_WORD
    )
    assert augment_text("", rng=random.Random(0), operators=["char"]).failure is Failure.NO_ELIGIBLE_WORD


# -- the operators themselves -------------------------------------------------------------------------


def test_keyboard_neighbours_are_the_us_layout():
    assert set(QWERTY_NEIGHBOURS["s"]) == set("awedxz")
    assert set(QWERTY_NEIGHBOURS["q"]) == set("wa") and set(QWERTY_NEIGHBOURS["m"]) == set("njk")
    assert set(QWERTY_NEIGHBOURS["g"]) == set("fhtyvb")
    for key, around in QWERTY_NEIGHBOURS.items():
        assert all(key in QWERTY_NEIGHBOURS[other] for other in around), key  # adjacency is mutual
    typos = {keyboard_typo("Sick", random.Random(s)) for s in range(50)}
    assert all(len(t) == 4 and sum(a != b for a, b in zip(t, "Sick")) == 1 for t in typos)
    assert {"Aick", "Dick", "Zick", "Wick"} & typos and all(t[0].isupper() for t in typos)
    assert keyboard_typo("2024", random.Random(0)) is None


def test_character_substitution_uses_look_alikes_and_keeps_case():
    outs = {substitute_character("pill", random.Random(s)) for s in range(60)}
    assert {"pi1l", "p1ll", "pil1"} & outs and all(o != "pill" and len(o) == 4 for o in outs)
    assert "nausea" != substitute_character("nausea", random.Random(0))
    for seed in range(20):
        assert not any(c.islower() for c in substitute_character("ROOM", random.Random(seed)))
    assert {substitute_character("arm", random.Random(s)) for s in range(60)} & {"arrn", "arnn"}
    assert substitute_character("pxp", random.Random(0)) is None  # nothing in "pxp" looks like anything


def test_synonym_swap_keeps_capitalisation_and_skips_odd_lemmas():
    table = TableSynonyms({"doctor": ["MD", "Dr.", "family doctor", "physician"], "ok": []})
    assert swap_synonym("doctor", random.Random(0), synonyms=table) == "physician"
    assert swap_synonym("Doctor", random.Random(0), synonyms=table) == "Physician"
    assert swap_synonym("DOCTOR", random.Random(0), synonyms=table) == "PHYSICIAN"
    assert swap_synonym("ok", random.Random(0), synonyms=table) is None


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("do not", "don't"), ("don't", "do not"), ("Do not", "Don't"), ("DO NOT", "DON'T"), ("it's", "it is"),
        ("I am", "I'm"), ("i am", "i'm"), ("can't", "cannot"), ("cannot", "can't"), ("won't", "will not"),
        ("don\u2019t", "do not"), ("do  not", "don't"), ("I've", "I have"), ("I have", None), ("pill", None),
    ],
)
def test_contraction_table_works_both_ways(before, after):
    assert contract_or_expand(before, random.Random(0)) == after


def test_contraction_joins_two_words_and_counts_both():
    outcome = augment_text("The pills do not help at all", rng=random.Random(0), operators=["contraction"])
    assert outcome.text == "The pills don't help at all"
    assert [(e.before, e.words) for e in outcome.edits] == [("do not", 2)]
    # Not across punctuation: "do. Not" is two sentences.
    assert augment_text("what I do. Not", rng=random.Random(0), operators=["contraction"]).failure is (
        Failure.NOT_APPLICABLE
    )


def test_phrases_never_span_punctuation():
    shout = Operator("shout", lambda phrase, rng: phrase.upper(), words=2, function_words=True)
    outcome = augment_text("no. way", rng=random.Random(0), operators=[shout], rate=1.0)
    assert outcome.text == "NO. WAY" and [e.before for e in outcome.edits] == ["no", "way"]


def test_operators_are_switchable_by_name():
    assert set(ALL_OPERATORS) == set(OPERATORS) == {"char", "keyboard", "synonym", "contraction"}
    assert [op.name for op in select_operators(["keyboard", "char", "keyboard"])] == ["keyboard", "char"]
    with pytest.raises(MonitorError, match="known"):
        select_operators(["backtranslate"])
    with pytest.raises(MonitorError):
        select_operators([])


@pytest.mark.skipif(not (DEFAULT_PATH / "data.noun").is_file(), reason="WordNet files missing: install wordnet-base")
def test_wordnet_is_the_default_synonym_source():
    outcome = augment_text("Pills for the headache", rng=random.Random(2), operators=["synonym"], rate=0.5)
    assert outcome.ok and outcome.edits[0].after.lower() in {"tablets", "lozenges", "tabs", "concerns", "worries"}


# -- minority copies ----------------------------------------------------------------------------------


def make_split():
    texts = iter(POSTS * 4)
    return (
        [Post(f"n{i}", f"{next(texts)} ({i})", "none") for i in range(8)]
        + [Post(f"a{i}", f"{next(texts)} [{i}]", "ade") for i in range(3)]
        + [Post(f"m{i}", f"{next(texts)} <{i}>", "maybe") for i in range(2)]
    )


def test_only_minority_classes_grow_by_copies_each():
    split = make_split()
    result = augment_minority(split, copies=3, seed=1, synonyms=SYNONYMS)
    assert result.minority == minority_classes(x.label for x in split) == {"ade", "maybe"}
    assert Counter(x.label for x in result.added) == result.made == {"ade": 9, "maybe": 6}
    assert not result.failures
    assert [x.id for x in result.added[:3]] == ["a0#aug1", "a0#aug2", "a0#aug3"]
    assert len({x.text for x in split + result.added}) == len(split) + len(result.added)
    only_ade = augment_minority(split, copies=1, seed=1, minority={"ade"}, synonyms=SYNONYMS)
    assert only_ade.made == {"ade": 3}
    with pytest.raises(MonitorError, match="'flu'"):
        augment_minority(split, copies=1, seed=1, minority={"flu"})


def test_deterministic_and_independent_of_input_order():
    split = make_split()
    first = augment_minority(split, copies=2, seed=9, synonyms=SYNONYMS)
    assert first == augment_minority(split, copies=2, seed=9, synonyms=SYNONYMS)
    shuffled = random.Random(0).sample(split, len(split))
    again = augment_minority(shuffled, copies=2, seed=9, synonyms=SYNONYMS)
    assert sorted(first.added, key=lambda x: x.id) == sorted(again.added, key=lambda x: x.id)
    other = augment_minority(split, copies=2, seed=10, synonyms=SYNONYMS)
    assert [x.text for x in other.added] != [x.text for x in first.added]


def test_which_of_two_equal_copies_is_the_duplicate_does_not_depend_on_order():
    split = [Post(f"n{i}", f"my fever is gone {i}", "none") for i in range(5)] + [
        Post("b", "I do not", "ade"),
        Post("a", "I do not", "ade"),  # same text: only one of the two can have "I don't"
    ]
    for examples in (split, split[::-1]):
        result = augment_minority(examples, copies=1, seed=0, operators=["contraction"])
        assert [x.id for x in result.added] == ["a#aug1"] and result.failures == {Failure.DUPLICATE: 1}


def test_every_failed_copy_is_counted_by_reason():
    split = [Post(f"n{i}", f"my fever is gone {i}", "none") for i in range(8)] + [
        Post("s1", "and then it was all of the same to me", "ade"),  # stop words only
        Post("s2", "@USER HTTPURL 500mg", "ade"),  # nothing that is a word to edit
        Post("d1", "I do not", "ade"),  # exactly one possible edit: "I don't"
        Post("d2", "I don't", "ade"),  # its one edit gives "I do not", which...
        Post("d3", "I do not.", "ade"),
        Post("ok", "the rash spread to my arms", "ade"),
    ]
    result = augment_minority(split, copies=2, seed=3, operators=["contraction", "keyboard"], attempts=3)
    assert result.failures[Failure.NOT_APPLICABLE] == 2  # s1 (contraction finds nothing), both copies
    assert result.failures[Failure.NO_ELIGIBLE_WORD] == 2  # s2
    # d1 -> "I don't" duplicates the existing post d2 (and d2 -> "I do not" duplicates d1): no copy at all.
    assert result.failures[Failure.DUPLICATE] == 2 * 2 + 1  # d3's second copy repeats its first
    assert result.retries[Failure.DUPLICATE] == result.failures[Failure.DUPLICATE] * 2
    assert set(result.retries) == {Failure.DUPLICATE}  # other failures are the text's own: no retry
    assert result.made == {"ade": 2 + 1}
    assert result.made["ade"] + result.failed_by_label["ade"] == 2 * 6
    assert "not made" in result.summary() and "duplicate" in result.summary()


def test_other_example_types_are_kept():
    class Tweet(NamedTuple):
        id: str
        text: str
        label: str

    split = [Tweet("1", "feeling fine today", "no"), Tweet("2", "feeling fine", "no"), Tweet("3", "rash again", "yes")]
    result = augment_minority(split, copies=1, seed=0, operators=["keyboard"])
    assert isinstance(result.added[0], Tweet) and result.added[0].id == "3#aug1"
    with pytest.raises(ValueError):
        augment_minority(split, copies=-1, seed=0)
