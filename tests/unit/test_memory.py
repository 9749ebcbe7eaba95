"""monitor.memory against this process's real glibc heap: what it reports, and what trimming gives back."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor import memory

pytestmark = pytest.mark.skipif(memory.heap_stats() is None, reason="needs glibc >= 2.33 (mallinfo2)")

CHUNK = 64 << 10  # below glibc's mmap threshold: these come from the heap, where freeing leaves holes


def resident() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


def test_in_use_follows_live_allocations() -> None:
    before = memory.heap_stats()
    chunks = [bytearray(CHUNK) for _ in range(1000)]  # 64 MB
    during = memory.heap_stats()
    assert during.in_use - before.in_use > 60 << 20
    del chunks
    assert memory.heap_stats().in_use - before.in_use < 8 << 20


def test_trim_returns_the_holes_a_burst_leaves() -> None:
    memory.trim()
    chunks = [bytearray(CHUNK) for _ in range(2000)]  # 128 MB, each page touched
    for i in range(len(chunks)):
        chunks[i][::4096] = b"x" * len(range(0, CHUNK, 4096))
    kept = chunks[::10]  # every 10th survives: the rest is free space glibc cannot trim from the top
    del chunks
    held = memory.heap_stats()
    assert held.free > 80 << 20
    rss_held = resident()
    assert memory.trim() is True
    assert rss_held - resident() > 60 << 20  # resident memory now follows what is in use
    assert memory.heap_stats().in_use >= len(kept) * CHUNK
