"""Occlusion attribution against a keyword classifier whose decisive line is known in advance."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import pytest

from monitor.attribution import Attribution, _variants, faithfulness, occlusion
from monitor.explainer.prompts import post_lines

_KEYWORDS = re.compile(r"\b(rash|nausea|dizzy|headache)\b", re.IGNORECASE)


def _p_adr(keywords: int) -> float:
    """softmax([0, 2k - 1])[1]: one keyword is enough to call the post "adr"."""
    return 1.0 / (1.0 + math.exp(-(2.0 * keywords - 1.0)))


class KeywordClassifier:
    """A Classifier whose p("adr") rises with the count of side-effect words; records every call."""

    labels = ("none", "adr")
    card = None
    device = "cpu"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    @property
    def model_version(self) -> str:
        return "keyword-test"

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        adr = np.array([_p_adr(len(_KEYWORDS.findall(text))) for text in texts], dtype=float).reshape(-1)
        return np.column_stack([1.0 - adr, adr])

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        return np.argmax(probabilities, axis=1)

    def device_memory_bytes(self) -> int | None:
        return None


class ConstantClassifier(KeywordClassifier):
    """Ignores its input: no line can matter."""

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.tile([0.3, 0.7], (len(texts), 1))


RASH_POST = "I started the new tablet on Monday. Then a rash spread over my arms. I will see the doctor soon."
DROP = round(_p_adr(1) - _p_adr(0), 4)


def test_the_line_with_the_keyword_is_the_evidence():
    classifier = KeywordClassifier()
    [attribution] = occlusion(classifier, [RASH_POST])
    lines = post_lines(RASH_POST)
    assert attribution.lines == len(lines) == 3
    assert "rash" in lines[attribution.evidence_line - 1]
    assert attribution.evidence_line == 2
    assert attribution.scores == (0.0, DROP, 0.0)
    assert attribution.scores[1] > 0.3
    assert attribution.baseline == round(_p_adr(1), 4)
    # The texts scored are the numbered lines joined, whole first, then each line left out.
    assert classifier.calls[0][0] == "\n".join(lines)
    assert classifier.calls[0][2] == "\n".join([lines[0], lines[2]])


POSTS = [
    RASH_POST,
    "Took it with food; felt nausea after an hour | slept fine",
    "No problems at all.",
    "",
    "Day one was fine. Day two I was dizzy. Day three a headache. Day four fine again.",
]


@pytest.mark.parametrize("explicit", [False, True])
def test_posts_are_batched_in_bounded_chunks_and_come_back_in_order(explicit):
    chunk = 4
    total = len({text for post in POSTS for text in _variants(post_lines(post))})  # each distinct text once
    alone = [occlusion(KeywordClassifier(), [post])[0] for post in POSTS]
    predicted = [1, 1, 0, 0, 1] if explicit else None
    classifier = KeywordClassifier()
    batched = occlusion(classifier, POSTS, predicted, chunk=chunk)
    # decide() reads the wholes' rows of the same pass: never an extra predict_proba call.
    assert len(classifier.calls) == math.ceil(total / chunk)
    assert all(0 < len(call) <= chunk for call in classifier.calls)
    assert sum(len(call) for call in classifier.calls) == total
    assert batched == alone
    assert [a.evidence_line for a in batched][4] == 2  # "dizzy" and "headache" tie: the first wins


def test_the_callers_own_probabilities_of_the_whole_posts_are_not_computed_again():
    posts = POSTS[:3] + [POSTS[4]]
    own = KeywordClassifier().predict_proba(posts)
    classifier = KeywordClassifier()
    given = occlusion(classifier, posts, [1, 1, 0, 1], whole=own)
    asked = [text for call in classifier.calls for text in call]
    assert not set(posts) & set(asked)  # no whole post went through the model
    assert len(asked) == len(set(asked)) == len({t for p in posts for t in _variants(post_lines(p))[1:]})
    assert given == occlusion(KeywordClassifier(), posts, [1, 1, 0, 1])
    with pytest.raises(ValueError, match="rows of probabilities"):
        occlusion(KeywordClassifier(), posts, whole=own[:2])


def test_one_line_post_is_scored_against_the_empty_text():
    classifier = KeywordClassifier()
    [attribution] = occlusion(classifier, ["Terrible rash today"])
    assert attribution == Attribution(lines=1, scores=(DROP,), evidence_line=1, baseline=round(_p_adr(1), 4))
    assert classifier.calls == [["Terrible rash today", ""]]


def test_empty_post_is_its_placeholder_line_and_no_posts_is_no_work():
    classifier = KeywordClassifier()
    [attribution] = occlusion(classifier, [""])
    assert classifier.calls == [["(empty post)", ""]]
    assert (attribution.lines, attribution.evidence_line, attribution.scores) == (1, 1, (0.0,))
    assert attribution.baseline == round(1 - _p_adr(0), 4)  # decided "none"
    assert occlusion(classifier, []) == []
    assert len(classifier.calls) == 1


def test_explicit_predicted_class_scores_that_class_drop():
    [attribution] = occlusion(KeywordClassifier(), [RASH_POST], predicted=[0])
    assert attribution.baseline == round(1 - _p_adr(1), 4)
    assert attribution.scores == (0.0, -DROP, 0.0)
    assert attribution.evidence_line == 1  # every drop is <= 0: the first of the zeros


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        occlusion(KeywordClassifier(), [RASH_POST], chunk=0)
    with pytest.raises(ValueError):
        occlusion(KeywordClassifier(), [RASH_POST, RASH_POST], predicted=[1])
    with pytest.raises(ValueError):
        occlusion(KeywordClassifier(), [RASH_POST], predicted=[2])


NEUTRAL = ["I took the tablet at night", "the pharmacy was busy", "my sister came over", "it was raining"]
SYMPTOMS = ["a rash came up", "nausea all morning", "felt dizzy at work", "a headache by noon"]
MULTI_LINE = [". ".join(NEUTRAL[:i] + [SYMPTOMS[i % 4]] + NEUTRAL[i:]) + "." for i in range(4)] * 3
SINGLE_LINE = ["rash again", "nothing to report"]


def test_chosen_line_moves_the_model_more_than_a_random_one():
    posts = MULTI_LINE + SINGLE_LINE
    classifier = KeywordClassifier()
    result = faithfulness(classifier, posts, seed=13, chunk=16)
    assert result.posts == len(MULTI_LINE)
    assert result.single_line == len(SINGLE_LINE)
    assert result.mean_drop_chosen == DROP
    assert result.mean_drop_chosen > result.mean_drop_random
    assert result.chosen_beats_random > 0.5
    # Only occlusion's pass: no forward pass for the random lines.
    assert len(classifier.calls) == math.ceil(len({t for p in posts for t in _variants(post_lines(p))}) / 16)
    assert faithfulness(KeywordClassifier(), posts, seed=13, chunk=16) == result
    assert faithfulness(KeywordClassifier(), posts, seed=14, chunk=16).mean_drop_chosen == DROP


def test_a_model_that_ignores_its_input_has_no_evidence():
    result = faithfulness(ConstantClassifier(), MULTI_LINE)
    assert (result.mean_drop_chosen, result.mean_drop_random, result.chosen_beats_random) == (0.0, 0.0, 0.0)
    assert result.posts == len(MULTI_LINE)


def test_no_multi_line_post_measures_nothing():
    result = faithfulness(KeywordClassifier(), SINGLE_LINE)
    assert (result.posts, result.single_line, result.mean_drop_chosen, result.mean_drop_random) == (0, 2, 0.0, 0.0)
