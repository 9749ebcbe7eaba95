"""The C heap of a long-running role process: how much of it is in use, and giving the rest back.

A soak showed the resident memory of the persist and explain roles rising in steps, each at a
burst of work (a backlog after a PostgreSQL outage, a forced redelivery) and flat in between: the
working set of the burst was freed, but glibc's malloc kept the pages. Two things follow from that:

- ``heap_stats`` reads glibc's ``mallinfo2``: bytes in use by live allocations and bytes free but
  still held. A leak grows the first; a burst grows only the second. The worker exports both
  (``monitor_heap_bytes{kind}``) so an operator can tell them apart without a debugger.
- ``trim`` calls ``malloc_trim(0)``, which hands free pages back to the kernel (the top of each
  arena and whole free pages inside it), so that resident memory follows what is really in use.
  It walks the arenas under their locks, a few milliseconds for a role's heap; the worker runs it
  off the event loop every ``supervisor.memory_trim_s`` seconds.

Both are no-ops (``None``/``False``) where the C library is not glibc (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass
from functools import cache


class _MallInfo2(ctypes.Structure):
    # struct mallinfo2 (glibc >= 2.33): every field a size_t.
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


@dataclass(frozen=True)
class HeapStats:
    in_use: int  # bytes in live allocations: small and large chunks plus mmap'd blocks
    free: int  # bytes free inside the heap, still resident until trimmed (or reused)
    mapped: int  # of ``in_use``, bytes in blocks malloc mmap'd on their own (returned on free)


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallinfo2.restype = _MallInfo2
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):  # not glibc, or glibc older than 2.33
        return None
    return libc


def heap_stats() -> HeapStats | None:
    """The C heap of this process now, or None without glibc >= 2.33."""
    libc = _libc()
    if libc is None:
        return None
    info = libc.mallinfo2()
    return HeapStats(in_use=info.uordblks + info.hblkhd, free=info.fordblks, mapped=info.hblkhd)


def trim() -> bool:
    """Return free heap pages to the kernel; True when some memory was released."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
