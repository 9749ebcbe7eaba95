"""What the root callback hands to every command."""

from __future__ import annotations

from dataclasses import dataclass

import typer

from monitor.config import Settings


@dataclass(frozen=True)
class State:
    settings: Settings


def settings_of(ctx: typer.Context) -> Settings:
    return ctx.find_root().obj.settings
