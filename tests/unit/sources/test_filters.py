"""The source filter: languages by primary subtag, whole-word keywords and hashtags, a hash sample."""

from __future__ import annotations

import pytest

from monitor.sources.filters import PostFilter, build_filter, sample_point
from monitor.tasks import load_task


def test_language_filter_keeps_wanted_and_undeclared_languages():
    keep = build_filter(["en", "pt-BR"], [], 1.0)
    assert keep.verdict("1", "hello", langs=["en-GB"]) == "kept"
    assert keep.verdict("1", "olá", langs=["pt"]) == "kept"  # pt-BR configured: primary subtag pt
    assert keep.verdict("1", "hallo", langs=["de"]) == "dropped_language"
    assert keep.verdict("1", "multi", langs=["de", "en"]) == "kept"
    assert keep.verdict("1", "no language declared") == "kept"


@pytest.mark.parametrize(("text", "tags", "verdict"), [
    ("Got my vaccine today", (), "kept"),            # prefix*
    ("VACCINATED at last", (), "kept"),
    ("the side-effects were awful", (), "kept"),      # a phrase matches across a hyphen
    ("side\neffect: rash", (), "kept"),               # and across a line break
    ("sideeffects", (), "dropped_keyword"),           # whole words only
    ("new #covid wave", (), "kept"),
    ("covid19 numbers", (), "dropped_keyword"),       # #covid is not a prefix
    ("nothing here", ("COVID",), "kept"),             # the platform's own hashtag markup counts
    ("I want to KILL myself", (), "kept"),
    ("unvaccinated", (), "dropped_keyword"),          # a word's start, not its middle
])
def test_keywords_match_whole_words_phrases_prefixes_and_hashtags(text, tags, verdict):
    keep = build_filter([], ["vaccin*", "side effect*", "#covid", "kill myself"], 1.0)
    assert keep.verdict("1", text, tags=tags) == verdict


def test_sample_is_a_stable_function_of_the_id_close_to_the_rate():
    keep = PostFilter(sample_rate=0.25)
    verdicts = [keep.verdict(f"at://did:plc:x/app.bsky.feed.post/{i}", "text") for i in range(4000)]
    assert verdicts == [keep.verdict(f"at://did:plc:x/app.bsky.feed.post/{i}", "text") for i in range(4000)]
    share = verdicts.count("kept") / len(verdicts)
    assert 0.22 < share < 0.28
    assert 0 <= sample_point("x") < 1


def test_every_shipped_task_has_watch_terms_that_compile():
    for name in ("druglib_adverse", "druglib_sentiment", "rmhd27_social_anxiety", "cssrs_suicide_risk",
                 "smm4h23_task1_covid_diagnosis", "smm4h23_task2_therapy_sentiment", "smm4h23_task4_sad_diagnosis"):
        terms = load_task(name).watch.terms()
        assert terms, name
        keep = build_filter([], terms, 1.0)
        assert keep.verdict("1", "nothing to do with health, just a sunny day") == "dropped_keyword", name


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="sample_rate"):
        PostFilter(sample_rate=0)
    with pytest.raises(ValueError, match="keyword"):
        build_filter([], ["*"], 1.0)
