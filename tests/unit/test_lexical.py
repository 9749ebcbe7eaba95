"""monitor.lexical: the TF-IDF transform rebuilt from saved arrays equals scikit-learn's, and the model learns."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.errors import ModelError
from monitor.lexical import VIEWS, LexicalModel

POSITIVE = ["this drug gave me a terrible rash", "awful nausea after the first dose", "severe headache and rash",
            "the side effects were terrible, constant nausea", "rash all over, stopped taking it"]
NEGATIVE = ["worked well, no problems at all", "great results and no side effects", "my blood pressure is fine now",
            "works well for me, would recommend", "no problems, great drug"]


def _fitted() -> LexicalModel:
    texts = POSITIVE * 3 + NEGATIVE * 3
    gold = ["adr"] * 15 + ["none"] * 15
    return LexicalModel.fit(texts, gold, ["none", "adr"])


def test_features_equal_scikit_learns_tfidf():
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = POSITIVE * 3 + NEGATIVE * 3
    model = _fitted()
    expected = []
    for name, options, most in VIEWS:
        vectorizer = TfidfVectorizer(min_df=2, max_features=most, sublinear_tf=True, **options)
        expected.append(vectorizer.fit_transform(texts))
        assert sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.get) == model.vocabularies[name]
    np.testing.assert_allclose(model.features(texts).toarray(), hstack(expected).toarray(), atol=1e-12)


def test_it_learns_and_round_trips_through_its_file(tmp_path):
    model = _fitted()
    probe = ["terrible rash and nausea", "no problems, works well"]
    log_p = model.log_proba(probe)
    assert np.allclose(np.exp(log_p).sum(axis=1), 1.0)
    assert list(log_p.argmax(axis=1)) == [1, 0]
    model.save(tmp_path)
    again = LexicalModel.load(tmp_path)
    np.testing.assert_allclose(again.log_proba(probe), log_p, atol=1e-6)  # coefficients are stored as float32
    assert again.labels == ("none", "adr")


def test_unseen_text_and_a_label_absent_from_training():
    model = LexicalModel.fit(POSITIVE * 2 + NEGATIVE * 2, ["adr"] * 10 + ["none"] * 10, ["none", "adr", "other"])
    log_p = model.log_proba(["", "zzzz qqqq", "🙂"])
    assert log_p.shape == (3, 3) and np.isfinite(log_p).all()
    assert (log_p.argmax(axis=1) != 2).all()  # never predicts what it never saw


def test_too_little_text_and_a_broken_file_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="no term used in two posts"):
        LexicalModel.fit(["a", "b"], ["x", "y"], ["x", "y"])
    (tmp_path / "lexical.npz").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="cannot read the lexical model"):
        LexicalModel.load(tmp_path)


def _lexical_folder(folder, *, serves: str = "lexical"):  # noqa: ANN001, ANN202
    """A model folder that serves its lexical model alone: the lexical file and a card, no encoder weights."""
    import json
    from datetime import UTC, datetime

    from monitor.model_card import CARD_FILE, Calibration, DecisionRule, ModelCard

    folder.mkdir(parents=True, exist_ok=True)
    _fitted().save(folder)
    card = ModelCard(format_version=2, model_version="adr-lexical", task="druglib_adverse", labels=["none", "adr"],
                     signal_labels=["adr"], metric="f1_positive", positive_label="adr", base_model="none",
                     max_length=64, calibration=Calibration(method="temperature", temperature=2.0, dtype="float64"),
                     decision=DecisionRule(kind="log_bias", biases=[0.0, 0.5]), serves=serves,
                     created_at=datetime.now(UTC))
    (folder / CARD_FILE).write_text(json.dumps(card.model_dump(mode="json")))
    return folder


def test_a_folder_serving_its_lexical_model_predicts_without_an_encoder(tmp_path):
    from monitor.config import ClassifierSettings
    from monitor.lexical import LexicalClassifier
    from monitor.model_card import softmax
    from monitor.runtime import load_classifier

    folder = _lexical_folder(tmp_path / "m")
    classifier = load_classifier(folder, ClassifierSettings(device="cpu"))
    assert isinstance(classifier, LexicalClassifier) and classifier.device == "cpu"
    texts = ["terrible rash and nausea", "no problems, works well", "", "x" * 100_000]
    probs = classifier.predict_proba(texts)
    assert probs.shape == (4, 2) and np.allclose(probs.sum(axis=1), 1.0)
    # The card's calibration over the lexical model's log-probabilities, then its decision rule.
    expected = softmax(LexicalModel.load(folder).log_proba(texts[:2]), 2.0)
    np.testing.assert_allclose(probs[:2], expected)
    assert [classifier.labels[i] for i in classifier.decide(probs[:2])] == ["adr", "none"]
    assert classifier.predict_proba([]).shape == (0, 2) and classifier.device_memory_bytes() is None


def test_serving_a_member_the_folder_does_not_describe_is_refused(tmp_path):
    from pydantic import ValidationError

    from monitor.lexical import LexicalClassifier
    from monitor.model_card import read_card

    folder = _lexical_folder(tmp_path / "m")
    card = read_card(folder)
    with pytest.raises(ValidationError, match="stack"):  # a stack needs its specification
        card.model_validate({**card.model_dump(), "serves": "stack"})
    with pytest.raises(ModelError, match="serves its encoder"):
        LexicalClassifier(card.model_copy(update={"serves": "encoder"}), LexicalModel.load(folder))
    with pytest.raises(ModelError, match="labels"):
        LexicalClassifier(card, LexicalModel.fit(POSITIVE * 3 + NEGATIVE * 3, ["a"] * 15 + ["b"] * 15, ["a", "b"]))


def test_a_grid_shares_one_vocabulary_and_each_entry_fits_as_alone():
    from monitor.lexical import REGULARISATION_GRID, Regularisation

    texts = POSITIVE * 2 + NEGATIVE * 5
    gold = ["adr"] * 10 + ["none"] * 25
    grid = [Regularisation(4.0, None), Regularisation(4.0, "balanced"), Regularisation(1.0, None)]
    fitted = LexicalModel.fit_grid(texts, gold, ["none", "adr"], grid)
    for setting, model in zip(grid, fitted):
        alone = LexicalModel.fit(texts, gold, ["none", "adr"], c=setting.c, class_weight=setting.class_weight)
        np.testing.assert_allclose(model.log_proba(texts), alone.log_proba(texts), atol=1e-9)
    # Weighting the rarer class up raises its probability on every post.
    assert (fitted[1].log_proba(texts)[:, 1] > fitted[0].log_proba(texts)[:, 1]).all()
    assert not np.allclose(fitted[2].log_proba(texts), fitted[0].log_proba(texts))
    assert REGULARISATION_GRID[0] == Regularisation()  # the plain default is tried first and wins ties


ODD = ["", "   ", "RASH rash Rash!!", "naïve café — ½ dose 😷 rash", "rash " * 50, "zzzz qqqq unseen words",
       "the side effects were terrible, constant nausea"]


@pytest.mark.parametrize("view", [name for name, _, _ in VIEWS])
def test_term_counts_over_a_vocabulary_equal_scikit_learns_counts(view):
    from sklearn.feature_extraction.text import CountVectorizer

    from monitor.lexical import _TermCounts, count_matrix

    options = dict(next(o for name, o, _ in VIEWS if name == view))
    vocabulary = _fitted().vocabularies[view]
    index = {term: i for i, term in enumerate(vocabulary)}
    expected = CountVectorizer(vocabulary=index, **options).transform(ODD)
    got = count_matrix(_TermCounts()(view, options, tuple(ODD)), index)
    assert got.shape == expected.shape and got.has_sorted_indices
    assert (got != expected).nnz == 0 and got.nnz == expected.nnz > 0


def test_a_batch_is_analysed_once_for_every_model_and_large_sets_are_not_kept():
    from monitor.lexical import _TermCounts

    counts = _TermCounts(keep=2, max_texts=3)
    options = dict(VIEWS[0][1])
    first = counts("word", options, ("a rash", "no rash"))
    assert counts("word", options, ("a rash", "no rash")) is first  # the second model's call: no new analysis
    assert counts("char", dict(VIEWS[1][1]), ("a rash", "no rash")) is not first  # another view, its own
    big = ("a", "b", "c", "d")
    assert counts("word", options, big) is not counts("word", options, big)  # over max_texts: not kept
    counts("word", options, ("x",))
    counts("word", options, ("y",))
    assert counts("word", options, ("a rash", "no rash")) is not first  # pushed out after `keep` newer batches
    # the features of two models on one batch equal each model's on its own
    model = _fitted()
    np.testing.assert_array_equal(model.features(ODD).toarray(), _fitted().features(list(ODD)).toarray())
