"""Local stand-ins for the platforms' streaming APIs (Jetstream, Mastodon); the recordings they replay
are in ``recording`` (``python -m monitor.sources.standin.recording`` writes them).
"""

from __future__ import annotations

from monitor.sources.standin.jetstream import JetstreamStandin
from monitor.sources.standin.mastodon import MastodonStandin
from monitor.sources.standin.server import Event, StandinServer

__all__ = ["Event", "JetstreamStandin", "MastodonStandin", "StandinServer"]
