"""Streaming public-health social-media monitor (ALEX: balanced fine-tuning + LLM explanation)."""

__version__ = "0.1.0"
