"""A PNG of one signal series: the observed values, each method's baseline mean and alert bound, the alerts.

matplotlib with the Agg backend, imported lazily (``evaluation.pyplot``), as the other plots.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from monitor.evaluation import pyplot
from monitor.signals.ears import Method, Score


def plot_series(
    starts: Sequence[datetime],
    values: Sequence[float],
    scores: dict[Method, Sequence[Score]],
    path: Path,
    *,
    title: str,
    ylabel: str = "flagged posts",
) -> Path:
    """One panel per method: the series, the baseline mean, the band up to the alert bound, alerts in red.

    The band is drawn only where the method has a full baseline; a C3 bound below zero (its two earlier
    buckets alone pass the threshold) is drawn at zero.
    """
    plt = pyplot()
    methods = list(scores)
    fig, axes = plt.subplots(max(len(methods), 1), 1, sharex=True, squeeze=False,
                             figsize=(11, 2.4 * max(len(methods), 1) + 0.8))
    for ax, method in zip(axes[:, 0], methods, strict=False):
        ax.plot(starts, values, color="C0", marker=".", linewidth=1, label="observed")
        scored = scores[method]
        if scored:
            when = [starts[s.index] for s in scored]
            expected = [s.expected for s in scored]
            upper = [max(s.upper, 0.0) if math.isfinite(s.upper) else 0.0 for s in scored]
            ax.plot(when, expected, color="C2", linestyle="--", linewidth=1, label="baseline mean")
            ax.fill_between(when, expected, upper, color="C2", alpha=0.15, label="below the alert bound")
            ax.plot(when, upper, color="C1", linewidth=1, label=f"alert bound ({method} > {scored[0].threshold:g})")
            hits = [s for s in scored if s.alert]
            if hits:
                ax.scatter([starts[s.index] for s in hits], [s.observed for s in hits], color="red", zorder=3,
                           s=36, label=f"alert ({len(hits)})")
        ax.set_ylabel(f"{method}: {ylabel}")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=7, ncol=3)
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xlabel("bucket start (UTC)")
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
