"""``model_card.json``: what a trained model folder is, how it was made, and how to use it.

A card keeps two things apart (format 2):

- ``calibration`` turns the network's logits into probabilities that mean what they say (fitted by
  negative log-likelihood on the validation split): every prediction row, the escalation threshold,
  the model-weighted signal series and the drift gauges read these.
- ``decision`` picks the label from those probabilities: the arg-max, or the arg-max after per-class
  log-biases tuned on validation for the task's metric (F1 of a minority class, say). The biases move
  the decision only; the probabilities stay calibrated.

A folder may hold two members, the fine-tuned encoder and a lexical model (``monitor.lexical``), and
``serves`` says which answers: the encoder, the lexical model alone (the encoder is then never
loaded), or a stack of both (``stack``). ``monitor train`` picks it by the validation metric.

Format 1 cards (older model folders) folded the biases into the logits before one temperature, so
their probabilities carry the decision shift; they are still served as they were trained.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from monitor.errors import ModelError

CARD_FILE = "model_card.json"


class Calibration(BaseModel):
    """logits -> calibrated probabilities: softmax(logits / temperature), or softmax(scale * logits + offset)."""

    model_config = ConfigDict(frozen=True)

    method: Literal["none", "temperature", "vector"]
    temperature: float = Field(1.0, gt=0)
    scale: list[float] | None = None  # vector scaling: one factor per class
    offset: list[float] | None = None  # vector scaling: one bias per class
    dtype: str = Field("float32", description="dtype of the logits it was fitted on (the serving dtype must match)")
    fitted_on: str = "validation"
    nll: dict[str, float] = Field(default_factory=dict, description="cross-validated NLL of each method tried")

    @model_validator(mode="after")
    def _vector_complete(self) -> Calibration:
        if self.method == "vector" and (self.scale is None or self.offset is None or len(self.scale) != len(self.offset)):
            raise ValueError("vector calibration needs a scale and an offset per class")
        return self

    def apply(self, logits: np.ndarray) -> np.ndarray:
        z = np.asarray(logits, dtype=np.float64)
        if self.method == "vector":
            return softmax(z * np.asarray(self.scale) + np.asarray(self.offset))
        return softmax(z, self.temperature if self.method == "temperature" else 1.0)


class DecisionRule(BaseModel):
    """Calibrated probabilities -> a label: arg-max of log(p) + biases (all zero = plain arg-max)."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["argmax", "log_bias"] = "argmax"
    biases: list[float] = Field(default_factory=list, description="per-class log-biases tuned for the task metric")
    tuned_for: str | None = None
    fitted: Literal["tuned", "argmax", "prior", "plugin"] | None = Field(
        None, description="how the rule was chosen for its metric (training.calibrate.decision_policy); "
                          "unset on cards made before the choice")

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        p = np.asarray(probabilities, dtype=np.float64)
        if self.kind == "argmax" or not self.biases:
            return p.argmax(axis=1)
        return (np.log(np.clip(p, 1e-12, 1.0)) + np.asarray(self.biases)).argmax(axis=1)


class StackSpec(BaseModel):
    """A stacked model: the encoder's calibrated log-probabilities and the lexical model's
    (``monitor.lexical``) combined linearly, fitted on validation. ``meta`` says how: ``pool``, one
    non-negative weight per member and an offset per class (a weighted product of the members'
    distributions); ``logistic`` (cards made before it), a multinomial logistic regression over both.
    Either way ``coef`` and ``intercept`` are what serving applies."""

    model_config = ConfigDict(frozen=True)

    members: list[str] = Field(default_factory=lambda: ["encoder", "lexical"])
    meta: Literal["logistic", "pool"] = "logistic"
    weights: list[float] | None = Field(None, description="pool only: each member's weight, in members order")
    encoder_calibration: Calibration
    coef: list[list[float]]  # (labels, 2 * labels): [log p_encoder, log p_lexical]
    intercept: list[float]
    folds: int = 5  # out-of-fold predictions on validation fitted the stack's calibration and decision

    def combine(self, encoder_logits: np.ndarray, lexical_log_proba: np.ndarray) -> np.ndarray:
        """The stack's logits (before the card's calibration) from its members' outputs."""
        features = stack_features(self.encoder_calibration, encoder_logits, lexical_log_proba)
        return features @ np.asarray(self.coef).T + np.asarray(self.intercept)


def stack_features(encoder_calibration: Calibration, encoder_logits: np.ndarray,
                   lexical_log_proba: np.ndarray) -> np.ndarray:
    """What a stack's meta-model reads: [log calibrated p_encoder, log p_lexical] per row."""
    encoder = np.log(np.clip(encoder_calibration.apply(encoder_logits), 1e-12, 1.0))
    return np.concatenate([encoder, np.asarray(lexical_log_proba, dtype=np.float64)], axis=1)


class ModelCard(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    format_version: int = 1
    model_version: str = Field(description="task + a hash of the weights; stored with every prediction")
    task: str
    labels: list[str]
    signal_labels: list[str]
    metric: str
    positive_label: str | None = None
    metric_labels: list[str] | None = None
    base_model: str
    max_length: int
    truncation: str = "head_tail"
    head_fraction: float = 0.25
    temperature: float = Field(1.0, description="format 1 only: softmax((logits + biases) / temperature)")
    biases: list[float] = Field(default_factory=list, description="format 1 only: logit biases folded into the probabilities")
    calibration: Calibration | None = None
    recalibrated: dict[str, Calibration] = Field(
        default_factory=dict, description="calibrations refitted for other serving dtypes (`monitor models calibrate`)")
    decision: DecisionRule | None = None
    stack: StackSpec | None = Field(None, description="set when the folder is an encoder + lexical stack")
    serves: Literal["encoder", "lexical", "stack"] | None = Field(
        None, description="which member answers (unset: the stack when there is one, else the encoder)")
    escalation_threshold: float = 0.0
    escalation_max_share: float = 0.1
    metrics: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    created_at: datetime

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if self.biases and len(self.biases) != len(self.labels):
            raise ValueError(f"{len(self.biases)} biases for {len(self.labels)} labels")
        if not set(self.signal_labels) <= set(self.labels):
            raise ValueError("signal labels must be among the labels")
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")
        if self.calibration is not None and self.calibration.scale is not None \
                and len(self.calibration.scale) != len(self.labels):
            raise ValueError(f"{len(self.calibration.scale)} calibration scales for {len(self.labels)} labels")
        if self.stack is not None and (len(self.stack.coef) != len(self.labels)
                                       or any(len(row) != 2 * len(self.labels) for row in self.stack.coef)):
            raise ValueError(f"stack coefficients must be {len(self.labels)} x {2 * len(self.labels)}")
        if self.decision is not None and self.decision.biases and len(self.decision.biases) != len(self.labels):
            raise ValueError(f"{len(self.decision.biases)} decision biases for {len(self.labels)} labels")
        if (self.serves == "stack") != (self.stack is not None) and self.serves is not None:
            raise ValueError("serves 'stack' and a stack specification go together")
        if self.serves == "lexical" and self.calibration is None:
            raise ValueError("a folder serving its lexical model needs that model's calibration (format 2)")
        return self

    @property
    def served(self) -> Literal["encoder", "lexical", "stack"]:
        """The member that answers: ``serves``, or for cards written before it the stack when there is one."""
        return self.serves or ("stack" if self.stack is not None else "encoder")

    @property
    def uses_encoder(self) -> bool:
        """Whether serving needs the transformer (torch) at all."""
        return self.served != "lexical"

    @property
    def uses_lexical(self) -> bool:
        return self.served != "encoder"

    def calibration_for(self, dtype: str) -> Calibration | None:
        """The calibration fitted on logits of ``dtype``; None when there is none (or a format 1 card)."""
        if self.calibration is not None and self.calibration.dtype == dtype:
            return self.calibration
        return self.recalibrated.get(dtype)

    def probabilities(self, logits: np.ndarray, calibration: Calibration | None = None) -> np.ndarray:
        """The served class probabilities of ``logits``: calibrated by ``calibration`` (default the
        card's own) for a format 2 card, as trained for a format 1 card."""
        if (calibration := calibration or self.calibration) is not None:
            return calibration.apply(logits)
        return softmax(logits, self.temperature, np.asarray(self.biases) if self.biases else None)

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        """The index of the served label of each row of ``probabilities``."""
        if self.decision is not None:
            return self.decision.apply(probabilities)
        return np.asarray(probabilities).argmax(axis=1)


def write_card(folder: Path, card: ModelCard) -> Path:
    path = folder / CARD_FILE
    path.write_text(json.dumps(card.model_dump(mode="json"), indent=2, sort_keys=False) + "\n")
    return path


def read_card(folder: Path) -> ModelCard:
    path = folder / CARD_FILE
    try:
        return ModelCard.model_validate_json(path.read_text())
    except FileNotFoundError as exc:
        raise ModelError(f"{folder} is not a trained model folder: no {CARD_FILE} (train one with `monitor train`)") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ModelError(f"{path}: invalid model card: {'.'.join(map(str, first['loc']))}: {first['msg']}") from exc


def softmax(logits: np.ndarray, temperature: float = 1.0, biases: np.ndarray | None = None) -> np.ndarray:
    """softmax((logits + biases) / temperature): biases move the decision, the temperature calibrates."""
    z = np.asarray(logits, dtype=np.float64)
    if biases is not None:
        z = z + np.asarray(biases, dtype=np.float64)
    z = z / temperature
    z = z - z.max(axis=1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=1, keepdims=True)
    return probs
