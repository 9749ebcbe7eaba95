"""Where a source has read up to: one record per source on a compacted topic, written only after the
broker acknowledged every post before it, so a restarted source resumes without a gap.

A position also keeps the ids the source sent in the last moments before it (``recent``): a resumed
stream starts a little earlier (Jetstream's order is rough; a backfill overlaps the live stream), and
those ids are not sent twice.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from monitor.config import KafkaSettings
from monitor.errors import BrokerError

#: Ids kept in a stored position (a few seconds of the busiest stream).
RECENT_LIMIT = 5000


@dataclass(frozen=True)
class Position:
    """A source's resume point: ``cursor`` (Jetstream ``time_us``, a Mastodon status id) and the ids it
    sent from ``cursor`` minus the rewind on."""

    source: str
    cursor: int | None
    recent: tuple[str, ...] = ()
    host: str | None = None
    updated_at: str = ""
    counts: dict[str, int] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        record = asdict(self)
        record["recent"] = list(self.recent[-RECENT_LIMIT:])
        return json.dumps(record, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, raw: bytes) -> Position:
        try:
            record: dict[str, Any] = json.loads(raw)
            cursor = record.get("cursor")
            if cursor is not None and (not isinstance(cursor, int) or isinstance(cursor, bool)):
                raise ValueError("cursor is not an integer")
            return cls(source=str(record["source"]), cursor=cursor,
                       recent=tuple(str(i) for i in record.get("recent") or ())[-RECENT_LIMIT:],
                       host=record.get("host"), updated_at=str(record.get("updated_at") or ""),
                       counts={str(k): int(v) for k, v in (record.get("counts") or {}).items()})
        except (ValueError, KeyError, TypeError) as exc:
            raise BrokerError(f"the stored source position is unreadable ({exc}); remove it with "
                              "`monitor source forget NAME` to start from the live stream") from exc


def load_positions(kafka: KafkaSettings, topic: str) -> dict[str, Position]:
    """Every stored position, by source name."""
    from monitor.kafka.broker import latest_by_key

    return {key.decode("utf-8", "replace"): Position.from_bytes(value)
            for key, value in latest_by_key(kafka, topic).items()}
