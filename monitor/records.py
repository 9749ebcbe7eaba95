"""The records that travel through the pipeline: frozen, validated, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_TEXT_CHARS = 40_000


class Post(BaseModel):
    """A social-media post as it arrives: the source's id is a string, never a number."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str = Field(min_length=1, max_length=128)
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    created_at: datetime
    source: str = Field("unknown", min_length=1, max_length=64)
    author: str | None = Field(None, max_length=64)
    lang: str | None = Field(None, max_length=16)
    geo: dict[str, Any] | None = None
    labels: dict[str, str] = Field(default_factory=dict, description="gold labels per task (evaluation streams)")

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text is blank")
        return value

    @field_validator("created_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        # A timestamp without a zone is taken as UTC, the convention of every source we read.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Prediction(BaseModel):
    """One classifier output for one post and task."""

    model_config = ConfigDict(frozen=True)

    post_id: str
    source: str = "unknown"
    task: str
    model_version: str
    label: str
    probabilities: dict[str, float]
    confidence: float = Field(ge=0.0, le=1.0)
    escalated: bool = False


class Explanation(BaseModel):
    """The explainer's answer on one (post, task, predicted label); ``unverified`` carries the reason."""

    model_config = ConfigDict(frozen=True)

    verdict: Literal["confirm", "reject", "unverified", "over_budget"]
    predicted_label: str
    suggested_label: str | None = None
    evidence: str | None = None
    rationale: str | None = None
    reason: str | None = None
    llm_model: str
    prompt_version: str
    latency_s: float = 0.0
    attempts: int = 0
    cached: bool = False
