"""Where a server's memory goes, from the traces ``loadtests/tracehook`` writes (``soak --trace-memory``).

The soak starts the server with ``trace_env`` and asks for the two snapshots with ``ask_snapshot``. For
each server process: its RSS, its Python heap as tracemalloc counts it, and glibc's heap in use and free
(mallinfo2), at the end of the warm-up and at the end of the load; the source lines whose Python
allocations grew most between the two snapshots; and a plot of these over the run. Caveats: Python's
small objects live in pymalloc's own mmapped arenas, outside malloc's figures; malloc's free memory
counts free chunks whose pages may already be back with the system; tracing itself adds tracemalloc's
tables (``tracemalloc_overhead``) to every process, and each snapshot briefly as much again.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import tracemalloc
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from loadtests.servers import REPO

MIB = 1024 * 1024
TOP_LINES = 8
HOOK = REPO / "loadtests" / "tracehook"


def trace_env(folder: Path, every_s: float) -> dict[str, str]:
    """The server's environment for tracing into ``folder`` (emptied first): the hook first on PYTHONPATH."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    path = os.pathsep.join(filter(None, [str(HOOK), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "SOAK_TRACE_DIR": str(folder.resolve()), "SOAK_TRACE_EVERY_S": str(every_s)}


def ask_snapshot(folder: Path, name: str) -> None:
    """Ask every traced process for its ``name`` snapshot ("warm" or "last"); each takes it within a second."""
    (folder / name).touch()


def wait_for_snapshots(folder: Path, pids: Sequence[int], name: str, timeout_s: float) -> bool:
    """Wait until each of ``pids`` that is traced has written its ``name`` snapshot; False on timeout."""
    traced = [pid for pid in pids if (folder / f"{pid}.jsonl").exists()]
    deadline = time.monotonic() + timeout_s
    while not all((folder / f"{pid}-{name}.snap").exists() for pid in traced):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def read_series(folder: Path) -> dict[int, list[dict]]:
    """pid -> the process's complete trace lines, oldest first (a line still being written is skipped)."""
    series = {}
    for path in sorted(folder.glob("*.jsonl")):
        text = path.read_text()
        complete = text[: text.rfind("\n") + 1]
        series[int(path.stem)] = [json.loads(line) for line in complete.splitlines() if line]
    return series


def figures(line: dict) -> dict[str, float]:
    """One trace line in MiB: RSS, the traced Python heap, tracemalloc's overhead, malloc's heap in use and
    free (where mallinfo2 was available)."""
    out = {
        "rss_mib": line["rss"] / MIB,
        "python_mib": line["traced"] / MIB,
        "tracemalloc_overhead_mib": line["tracemalloc_overhead"] / MIB,
    }
    if "uordblks" in line:
        out["malloc_in_use_mib"] = (line["uordblks"] + line["hblkhd"]) / MIB
        out["malloc_free_mib"] = line["fordblks"] / MIB
    return {k: round(v, 1) for k, v in out.items()}


def names(roles: Mapping[int, str], pids: list[int]) -> dict[int, str]:
    """A report name per traced pid with a role: the role, or role-pid where several processes share it."""
    known = [pid for pid in pids if pid in roles]
    shared = Counter(roles[pid] for pid in known)
    return {pid: roles[pid] if shared[roles[pid]] == 1 else f"{roles[pid]}-{pid}" for pid in known}


def _growth(folder: Path, pid: int) -> list[dict]:
    """The source lines whose traced allocations grew most from the warm snapshot to the last."""
    old = tracemalloc.Snapshot.load(str(folder / f"{pid}-warm.snap"))
    new = tracemalloc.Snapshot.load(str(folder / f"{pid}-last.snap"))
    stats = sorted(new.compare_to(old, "lineno"), key=lambda s: s.size_diff, reverse=True)
    return [
        {"where": f"{s.traceback[0].filename}:{s.traceback[0].lineno}", "grew_kib": round(s.size_diff / 1024, 1)}
        for s in stats[:TOP_LINES]
        if s.size_diff > 0
    ]


def heap_report(folder: Path, roles: Mapping[int, str], start_time: float) -> dict[str, dict]:
    """Per process with a role and both snapshots: its figures when the warm and the last snapshots were
    taken (minutes after ``start_time``, a wall-clock time), and the lines that grew most in between."""
    series = read_series(folder)
    report: dict[str, dict] = {}
    for pid, name in names(roles, list(series)).items():
        marked = {key: line for line in series[pid] for key in ("warm", "last") if line.get(key)}
        if len(marked) < 2:  # the process ended, or the run did, before both snapshots
            continue
        report[name] = {
            "pid": pid,
            "from_min": round((marked["warm"]["time"] - start_time) / 60, 1),
            "to_min": round((marked["last"]["time"] - start_time) / 60, 1),
            "after_warmup": figures(marked["warm"]),
            "end": figures(marked["last"]),
            "grew_most": _growth(folder, pid),
        }
    return report


def unknown_pids(folder: Path, roles: Mapping[int, str]) -> list[int]:
    """Traced processes the soak never saw as part of the server (e.g. a worker that was replaced)."""
    return [pid for pid in read_series(folder) if pid not in roles]


def plot_heap(folder: Path, roles: Mapping[int, str], start_time: float, path: Path) -> None:
    """RSS, malloc's heap in use and free, and the traced Python heap of each process over the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_series(folder)
    named = {name: series[pid] for pid, name in names(roles, list(series)).items() if series[pid]}
    if not named:
        return
    fig, axes = plt.subplots(len(named), 1, figsize=(9, 2.6 * len(named)), sharex=True, squeeze=False)
    for ax, (name, lines) in zip(axes[:, 0], sorted(named.items()), strict=True):
        minutes = [(line["time"] - start_time) / 60 for line in lines]
        rows = [figures(line) for line in lines]
        for key, label in (
            ("rss_mib", "RSS"),
            ("malloc_in_use_mib", "malloc in use"),
            ("malloc_free_mib", "malloc free"),
            ("python_mib", "Python heap (tracemalloc)"),
        ):
            if key in rows[0]:
                ax.plot(minutes, [r[key] for r in rows], label=label)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("MiB")
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("minutes of load")
    fig.suptitle("Soak, traced: where each server process's memory goes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_report(report: Mapping[str, dict]) -> list[str]:
    """Lines for the soak's printed report."""
    lines = []
    for name, r in sorted(report.items()):
        a, e = r["after_warmup"], r["end"]
        change = ", ".join(f"{k.removesuffix('_mib')} {a[k]:.1f} -> {e[k]:.1f}" for k in a)
        lines.append(f"  {name:<8} minute {r['from_min']:g} -> {r['to_min']:g} (MiB): {change}")
        lines.extend(f"           +{g['grew_kib']:.0f} KiB {g['where']}" for g in r["grew_most"][:3])
    return lines
