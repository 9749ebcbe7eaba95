"""The model-health page's counts, with each complete UTC day's kept in the process for a while.

A day that has ended no longer changes (predictions are stamped when they are written), so a page of
30 days reads from the database only the partial first day and today, once every day is cached. What
can still change an ended day is an erasure or a backdated write; ``ttl_s`` bounds how long the page
may count those rows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from monitor.storage.console import (
    HealthCell,
    TaskHealth,
    day_spans,
    health_cell,
    prediction_labels,
    summarize_health,
)
from monitor.storage.tables import LIVE_RUN

#: A day is cached once it ended this long ago: rows of a worker's transaction still open at midnight land.
SETTLE = timedelta(minutes=10)


class HealthCache:
    """Health cells of ended days by (task, run, day start), each for ``ttl_s`` seconds (0: no cache)."""

    def __init__(self, ttl_s: float, *, monotonic: Callable[[], float] = time.monotonic):
        self.ttl_s = ttl_s
        self._monotonic = monotonic
        self._cells: dict[tuple[str, str, datetime], tuple[float, HealthCell]] = {}
        self._lock = threading.Lock()

    def task_health(self, session: Session, task: str, *, since: datetime, until: datetime, now: datetime,
                    run: str = LIVE_RUN) -> TaskHealth:
        """``storage.console.task_health``, reading a whole day ended before ``now`` from the cache when held."""
        labels: list[str] | None = None
        cells = []
        at = self._monotonic()
        for start, end in day_spans(since, until):
            whole = end - start == timedelta(days=1) and end <= now - SETTLE
            key = (task, run, start)
            if whole and self.ttl_s > 0:
                with self._lock:
                    held = self._cells.get(key)
                if held is not None and at - held[0] < self.ttl_s:
                    cells.append(held[1])
                    continue
            if labels is None:
                labels = prediction_labels(session, task, run)
            cell = health_cell(session, task, start, end, labels=labels, run=run)
            if whole and self.ttl_s > 0:
                with self._lock:
                    self._cells[key] = (at, cell)
            cells.append(cell)
        self._forget_expired(at)
        return summarize_health(task, cells)

    def _forget_expired(self, at: float) -> None:
        with self._lock:
            for key in [k for k, (stored, _) in self._cells.items() if at - stored >= self.ttl_s]:
                del self._cells[key]
