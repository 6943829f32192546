"""Memory tracing for every Python process of a server under test (``python -m loadtests.soak --trace-memory``).

Python imports ``sitecustomize`` at start-up from the first folder on ``sys.path`` that has one; the soak
puts this folder first on the server's PYTHONPATH, so BentoML's manager and every worker it spawns load
it (and not the interpreter's own sitecustomize, if it has one). With SOAK_TRACE_DIR set, each process
traces its Python allocations (tracemalloc, one frame) and every SOAK_TRACE_EVERY_S seconds (default 60)
appends a line to ``<pid>.jsonl``: wall time, RSS, the traced Python heap, tracemalloc's own overhead and
glibc's malloc figures (mallinfo2, all arenas). It takes a tracemalloc snapshot only when the soak asks,
by creating a file in the folder: ``warm`` at the end of the warm-up (``<pid>-warm.snap``) and ``last``
at the end of the load (``<pid>-last.snap``), the lines marked so. Two snapshots in a run: a snapshot is as
large as the traced heap, and one taken every minute would be the growth it was meant to explain.
Without SOAK_TRACE_DIR it does nothing.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import threading
import time
import tracemalloc
from typing import Any

POLL_S = 1.0  # how soon a trigger file is noticed


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks")
        + ("fordblks", "keepcost")
    ]


def _mallinfo2() -> Any:
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (AttributeError, OSError):  # glibc before 2.33, or musl
        return None
    fn.restype = _MallInfo2
    return fn


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Tracer:
    def __init__(self, folder: str, every_s: float) -> None:
        self.folder, self.every_s, self.pid = folder, every_s, os.getpid()
        self.mallinfo2, self.taken = _mallinfo2(), set()

    def line(self) -> dict:
        """Wall time, RSS, the traced heap and tracemalloc's overhead; malloc's figures in bytes where known:
        from the system in arenas (arena) and in mmapped chunks (hblkhd), in use (uordblks), free (fordblks)."""
        out = {
            "time": round(time.time(), 1),
            "rss": _rss_bytes(),
            "traced": tracemalloc.get_traced_memory()[0],
            "tracemalloc_overhead": tracemalloc.get_tracemalloc_memory(),
        }
        if self.mallinfo2 is not None:
            info = self.mallinfo2()
            out.update({name: int(getattr(info, name)) for name in ("arena", "hblkhd", "uordblks", "fordblks")})
        return out

    def asked(self) -> list[str]:
        """The snapshots the soak asks for (its trigger files) and this process has not taken yet."""
        return [n for n in ("warm", "last") if n not in self.taken and os.path.exists(os.path.join(self.folder, n))]

    def snapshot(self, name: str) -> None:
        path = os.path.join(self.folder, f"{self.pid}-{name}.snap")
        tracemalloc.take_snapshot().dump(path + ".partial")  # the snapshot is freed at once
        os.replace(path + ".partial", path)  # a reader never loads a half-written snapshot
        self.taken.add(name)

    def run(self) -> None:
        next_line = time.monotonic() + self.every_s
        while True:
            time.sleep(POLL_S)
            try:
                names = self.asked()
                if not names and time.monotonic() < next_line:
                    continue
                # A snapshot's memory, freed, stays with malloc: the warm line is read after its snapshot and
                # the last line before its own, so the change between them is the server's, not the tracer's.
                if "warm" in names:
                    self.snapshot("warm")
                with open(os.path.join(self.folder, f"{self.pid}.jsonl"), "a") as f:
                    f.write(json.dumps(self.line() | {name: True for name in names}) + "\n")
                if "last" in names:  # after its line: once the last snapshot exists, every line is written
                    self.snapshot("last")
                next_line = max(next_line, time.monotonic()) if names else next_line + self.every_s
            except Exception:  # a broken trace must not go unnoticed, nor stop the server
                logging.getLogger("soak.trace").exception("memory trace of pid %d failed; tracing stops", self.pid)
                return


def _start() -> None:
    folder = os.environ.get("SOAK_TRACE_DIR")
    if not folder:
        return
    tracemalloc.start(1)
    tracer = _Tracer(folder, float(os.environ.get("SOAK_TRACE_EVERY_S", "60")))
    threading.Thread(target=tracer.run, daemon=True, name="soak-trace").start()


_start()
