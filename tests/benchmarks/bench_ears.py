"""Benchmark (not a test): EARS C1/C2/C3 sensitivity and false alarms on synthetic series with known spikes.

    .venv/bin/python tests/benchmarks/bench_ears.py --out ears.png [--buckets 2000] [--series 10] [--seed 0]

Backgrounds are seeded Poisson counts of flagged posts per bucket (mean 2, 10 and 50; and a daily
series of mean 10 with a weekly rhythm of +-30%, which EARS does not model). Each post carries a
calibrated probability drawn from Beta(8, 2), so every series is scored twice: as a count and as the sum
of probabilities (weighted). Every 24th bucket gets a one-bucket spike of +2, +3 or +4 standard
deviations of the count background (round(k * sqrt(mean)) extra posts; the weighted series gets the
same posts). Detection uses the production defaults (``SignalsSettings()``: baseline 7, guard 2, sd
floor, thresholds, min_posts).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from monitor.config import SignalsSettings
from monitor.evaluation import pyplot
from monitor.signals.detect import params_of
from monitor.signals.ears import METHODS, DetectionRates, detection_rates, ears, gate, synthetic_series

SIZES = (2.0, 3.0, 4.0)
KINDS = ("count", "weighted")
DEFINITIONS = (
    "sensitivity: share of injected spikes with an alert in the spike bucket or the one after it "
    "(spikes in buckets without a full baseline are not counted).",
    "false alarms per 1,000: alerts on clean buckets per 1,000 clean buckets; clean = scored, and neither a "
    "spike bucket nor one of the 2 after it (C3 carries a spike's C2 term for 2 more buckets). "
    "'no spikes' = the same backgrounds without any spike; 'spiked' = clean buckets of the spiked series, "
    "pooled over the three spike sizes.",
)


@dataclass(frozen=True)
class Background:
    name: str
    mean: float
    weekly: float = 0.0


BACKGROUNDS = (
    Background("Poisson 2", 2.0),
    Background("Poisson 10", 10.0),
    Background("Poisson 50", 50.0),
    Background("10, weekly ±30%", 10.0, weekly=0.3),
)


def _rates(background: Background, size: float, kind: str, method: str, *, buckets: int, series: int, seed: int,
           settings: SignalsSettings) -> DetectionRates:
    params = params_of(settings)
    total = DetectionRates()
    for k in range(series):
        s = synthetic_series(buckets, background.mean, seed=seed + k, spike_sd=size,
                             weekly_amplitude=background.weekly)
        spikes = s.spikes if size > 0 else ()
        values = s.counts if kind == "count" else s.weighted
        scores = gate(ears(values, method, params), s.counts.tolist(), settings.min_posts)  # type: ignore[arg-type]
        total = total + detection_rates(scores, spikes)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_ears.png"), help="PNG of the results")
    parser.add_argument("--buckets", type=int, default=2000, help="Buckets per synthetic series")
    parser.add_argument("--series", type=int, default=10, help="Seeded series per background and spike size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    settings = SignalsSettings()
    console = Console(width=max(Console().width, 120))  # the table is wider than a pipe's 80 columns
    table = Table("background", "series", "method", *(f"sens. +{s:g} sd" for s in SIZES), "FA/1000 no spikes",
                  "FA/1000 spiked", title=f"EARS on synthetic series ({args.series} x {args.buckets} buckets per cell; "
                  f"baseline {settings.baseline}, guard {settings.guard}, sd floor {settings.sd_floor:g}, "
                  f"min posts {settings.min_posts})")
    results: dict[tuple[str, str, str], tuple[list[DetectionRates], DetectionRates, DetectionRates]] = {}
    for background in BACKGROUNDS:
        for kind in KINDS:
            for method in METHODS:
                run = {"buckets": args.buckets, "series": args.series, "seed": args.seed, "settings": settings}
                spiked = [_rates(background, size, kind, method, **run) for size in SIZES]
                quiet = _rates(background, 0.0, kind, method, **run)
                pooled = sum(spiked, DetectionRates())
                results[(background.name, kind, method)] = (spiked, quiet, pooled)
                table.add_row(background.name, kind, method, *(f"{r.sensitivity:.1%}" for r in spiked),
                              f"{quiet.false_alarms_per_1000:.1f}", f"{pooled.false_alarms_per_1000:.1f}",
                              end_section=method == METHODS[-1] and kind == KINDS[-1])
    console.print(table)
    spikes = results[(BACKGROUNDS[0].name, KINDS[0], METHODS[0])][0][0].spikes
    console.print(f"{spikes} spikes and about {args.series * args.buckets:,} buckets per cell.")
    for line in DEFINITIONS:
        console.print(f"- {line}", highlight=False)
    _plot(results, args.out)
    console.print(f"wrote {args.out}")


def _plot(results: dict, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(2, len(BACKGROUNDS), figsize=(4 * len(BACKGROUNDS), 7), squeeze=False)
    for col, background in enumerate(BACKGROUNDS):
        top, bottom = axes[0, col], axes[1, col]
        for m, method in enumerate(METHODS):
            for kind, style in zip(KINDS, ("-", "--"), strict=True):
                spiked, quiet, _pooled = results[(background.name, kind, method)]
                top.plot(SIZES, [r.sensitivity for r in spiked], style, marker="o", color=f"C{m}",
                         label=f"{method} {kind}")
                offset = (m - 1) * 0.28 + (0.07 if kind == "weighted" else -0.07)
                bottom.bar(1 + offset, quiet.false_alarms_per_1000, width=0.13, color=f"C{m}",
                           hatch="//" if kind == "weighted" else None, label=f"{method} {kind}")
        top.set_title(background.name)
        top.set_xlabel("spike size (background sds)")
        top.set_ylim(0, 1.02)
        top.grid(alpha=0.3)
        bottom.set_xticks([])
        bottom.set_xlabel("C1 | C2 | C3 (hatched: weighted)")
        bottom.grid(alpha=0.3, axis="y")
    axes[0, 0].set_ylabel("sensitivity")
    axes[1, 0].set_ylabel("false alarms per 1,000 buckets (no spikes)")
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
