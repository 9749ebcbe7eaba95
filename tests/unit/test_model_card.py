"""monitor.model_card: what a card serves (format 1 as trained, format 2 calibrated then decided, stacks)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from monitor.model_card import Calibration, DecisionRule, ModelCard, StackSpec, softmax

FIELDS = dict(model_version="t-1", task="t", labels=["a", "b"], signal_labels=["b"], metric="f1_positive",
              base_model="b", max_length=8, created_at="2026-01-01T00:00:00Z")
LOGITS = np.array([[1.0, -1.0], [0.0, 0.3], [-2.0, 2.0]])


def test_a_format_1_card_serves_what_it_was_trained_to():
    card = ModelCard(temperature=2.0, biases=[0.0, 1.0], **FIELDS)
    np.testing.assert_allclose(card.probabilities(LOGITS), softmax(LOGITS, 2.0, np.array([0.0, 1.0])))
    assert list(card.decide(card.probabilities(LOGITS))) == [0, 1, 1]


def test_a_format_2_card_calibrates_then_decides():
    card = ModelCard(format_version=2, calibration=Calibration(method="temperature", temperature=2.0),
                     decision=DecisionRule(kind="log_bias", biases=[0.0, 0.8]), **FIELDS)
    probs = card.probabilities(LOGITS)
    np.testing.assert_allclose(probs, softmax(LOGITS, 2.0))  # no bias in the probabilities
    assert list(probs.argmax(1)) == [0, 1, 1] and list(card.decide(probs)) == [0, 1, 1]
    # The bias flips a close call without changing its probability.
    close = np.array([[0.55, 0.45]])
    assert card.decide(close)[0] == 1 and DecisionRule().apply(close)[0] == 0


def test_vector_calibration_and_dtype_lookup():
    vector = Calibration(method="vector", scale=[0.5, 2.0], offset=[0.0, -1.0], dtype="float32")
    np.testing.assert_allclose(vector.apply(LOGITS), softmax(LOGITS * [0.5, 2.0] + [0.0, -1.0]))
    int8 = Calibration(method="temperature", temperature=1.3, dtype="int8")
    card = ModelCard(format_version=2, calibration=vector, recalibrated={"int8": int8}, **FIELDS)
    assert card.calibration_for("float32") == vector and card.calibration_for("int8") == int8
    assert card.calibration_for("bfloat16") is None
    np.testing.assert_allclose(card.probabilities(LOGITS, int8), softmax(LOGITS, 1.3))


def test_a_stack_combines_its_members():
    stack = StackSpec(encoder_calibration=Calibration(method="none"), coef=[[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]],
                      intercept=[0.0, 0.0])
    card = ModelCard(format_version=2, calibration=Calibration(method="none"), stack=stack, **FIELDS)
    lexical = np.log(np.array([[0.5, 0.5], [0.9, 0.1], [0.1, 0.9]]))
    combined = card.stack.combine(LOGITS, lexical)
    expected = np.log(softmax(LOGITS)) + lexical  # equal weights: the product of the members' probabilities
    np.testing.assert_allclose(combined, expected)


@pytest.mark.parametrize("bad", [
    {"calibration": {"method": "vector", "scale": [1.0, 1.0]}},
    {"calibration": {"method": "vector", "scale": [1.0, 1.0, 1.0], "offset": [0.0, 0.0, 0.0]}},
    {"decision": {"kind": "log_bias", "biases": [0.0, 1.0, 2.0]}},
    {"stack": {"encoder_calibration": {"method": "none"}, "coef": [[1.0, 0.0], [0.0, 1.0]], "intercept": [0, 0]}},
])
def test_inconsistent_cards_are_refused(bad):
    with pytest.raises(ValidationError):
        ModelCard(format_version=2, **FIELDS, **bad)
