"""``model_card.json``: what a trained model folder is, how it was made, and how to use it."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from monitor.errors import ModelError

CARD_FILE = "model_card.json"


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
    temperature: float = 1.0
    biases: list[float] = Field(default_factory=list, description="log-space class biases tuned on validation")
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
        return self


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
