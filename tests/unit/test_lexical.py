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
