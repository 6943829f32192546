"""Give the allocator's free-but-held memory back to the system, once a minute by default, in each worker.

glibc's malloc keeps memory that a request freed for the next one, in one arena per thread that
allocated it. Under steady load a worker's RSS then drifts with which arenas happen to hold free pages,
not with what it uses: the 2-hour soak measured the front's Python heap and malloc's in-use bytes flat
while its RSS wandered by tens of MiB (docs/operations.md#memory). ``malloc_trim(0)`` returns the free
pages of every arena, so RSS follows use. It walks the arenas under their locks: a few milliseconds
for a few hundred MiB, once per interval.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


def glibc_trim() -> Callable[[], bool] | None:
    """glibc's ``malloc_trim(0)`` as a call that says whether it released memory; None on other C libraries."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own symbols, libc's among them
    except (OSError, AttributeError):  # musl, macOS: no malloc_trim
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: bool(trim(0))


def trim_now() -> bool:
    """Give free heap memory back to the system once, where the C library can; whether any was released."""
    trim = glibc_trim()
    return trim is not None and trim()


def start_trimming(interval_s: float, trim: Callable[[], bool] | None = None) -> threading.Event | None:
    """Trim every ``interval_s`` seconds in a daemon thread (ctypes lets go of the GIL meanwhile) until
    the returned event is set; None when ``interval_s`` is 0 or the C library cannot trim."""
    if interval_s <= 0:
        return None
    trim = trim or glibc_trim()
    if trim is None:
        logger.info("this C library has no malloc_trim: memory is not trimmed")
        return None
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            trim()

    threading.Thread(target=loop, name="malloc-trim", daemon=True).start()
    return stop
