"""Memory tracing for every Python process of a server under test (``python -m loadtests.soak --trace-memory``).

Python imports ``sitecustomize`` at start-up from the first folder on ``sys.path`` that has one; the soak
puts this folder first on the server's PYTHONPATH, so BentoML's manager and every worker it spawns load
it. With SOAK_TRACE_DIR set, each process traces its Python allocations (tracemalloc, one frame) and every
SOAK_TRACE_EVERY_S seconds (default 60) appends a line to ``<pid>.jsonl``: its RSS, the traced Python heap
and glibc's malloc statistics (mallinfo2), so a growing RSS can be told apart as Python objects, memory the
allocator holds but does not use, or memory outside malloc. It keeps two tracemalloc snapshots: the first
taken after SOAK_TRACE_WARMUP_S seconds of the process's life (``<pid>-warm.snap``, its line marked
``warm``) and the latest (``<pid>-last.snap``), so the disk use stays flat however long the run.
Without SOAK_TRACE_DIR it does nothing.
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
import time
import tracemalloc


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks")
        + ("fordblks", "keepcost")
    ]


def _mallinfo() -> dict[str, int]:
    """glibc's heap figures in bytes: from the system (arena: sbrk/arena heaps, hblkhd: mmapped chunks),
    in use (uordblks) and free but held (fordblks); empty where mallinfo2 is missing (glibc < 2.33, musl)."""
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (AttributeError, OSError):
        return {}
    fn.restype = _MallInfo2
    info = fn()
    return {name: int(getattr(info, name)) for name in ("arena", "hblkhd", "uordblks", "fordblks")}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _dump_forever(folder: str, every_s: float, warmup_s: float) -> None:
    pid, start, warm = os.getpid(), time.monotonic(), False
    while True:
        time.sleep(every_s)
        t_s = time.monotonic() - start
        snapshot = tracemalloc.take_snapshot()
        # Written aside and renamed, so a reader never loads a half-written snapshot.
        partial = os.path.join(folder, f"{pid}-last.snap.partial")
        snapshot.dump(partial)
        os.replace(partial, os.path.join(folder, f"{pid}-last.snap"))
        line = {"t_s": round(t_s, 1), "rss": _rss_bytes(), "traced": tracemalloc.get_traced_memory()[0]}
        if not warm and t_s >= warmup_s:
            snapshot.dump(os.path.join(folder, f"{pid}-warm.snap"))
            warm = line["warm"] = True
        with open(os.path.join(folder, f"{pid}.jsonl"), "a") as f:
            f.write(json.dumps({**line, **_mallinfo()}) + "\n")


def _start() -> None:
    folder = os.environ.get("SOAK_TRACE_DIR")
    if not folder:
        return
    tracemalloc.start(1)
    every_s = float(os.environ.get("SOAK_TRACE_EVERY_S", "60"))
    warmup_s = float(os.environ.get("SOAK_TRACE_WARMUP_S", "600"))
    threading.Thread(target=_dump_forever, args=(folder, every_s, warmup_s), daemon=True, name="soak-trace").start()


_start()
