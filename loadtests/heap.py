"""Where a server's memory goes, from the traces ``loadtests/tracehook`` writes (``soak --trace-memory``).

For each server process: its Python heap as tracemalloc counts it, glibc's heap in use and free-but-held
(mallinfo2), and its RSS, at the end of the warm-up and at the end of the run; the source lines whose
Python allocations grew most between the two snapshots; and a plot of the three over time.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Mapping
from pathlib import Path

MIB = 1024 * 1024
TOP_LINES = 8


def read_series(folder: Path) -> dict[int, list[dict]]:
    """pid -> the process's trace lines (oldest first), from ``<pid>.jsonl``."""
    return {
        int(path.stem): [json.loads(line) for line in path.read_text().splitlines() if line]
        for path in sorted(folder.glob("*.jsonl"))
    }


def _figures(line: dict) -> dict[str, float]:
    """One trace line in MiB: RSS, the traced Python heap, malloc's heap in use and held free."""
    out = {"rss_mib": line["rss"] / MIB, "python_mib": line["traced"] / MIB}
    if "uordblks" in line:
        out["malloc_in_use_mib"] = (line["uordblks"] + line["hblkhd"]) / MIB
        out["malloc_free_held_mib"] = line["fordblks"] / MIB
    return {k: round(v, 1) for k, v in out.items()}


def _growth(folder: Path, pid: int) -> list[dict]:
    """The source lines whose traced allocations grew most from the warm snapshot to the last."""
    old = tracemalloc.Snapshot.load(str(folder / f"{pid}-warm.snap"))
    new = tracemalloc.Snapshot.load(str(folder / f"{pid}-last.snap"))
    stats = new.compare_to(old, "lineno")
    stats.sort(key=lambda s: s.size_diff, reverse=True)
    return [
        {"where": f"{s.traceback[0].filename}:{s.traceback[0].lineno}", "grew_kib": round(s.size_diff / 1024, 1)}
        for s in stats[:TOP_LINES]
        if s.size_diff > 0
    ]


def heap_report(folder: Path, roles: Mapping[int, str]) -> dict[str, dict]:
    """Per role (one process each): figures at the warm snapshot (taken once the warm-up had passed in the
    process's life) and at the last one, and the lines that grew most in between. Processes not in
    ``roles``, or whose run ended before the warm snapshot, are left out."""
    report: dict[str, dict] = {}
    for pid, lines in read_series(folder).items():
        role = roles.get(pid)
        warm = next((i for i, line in enumerate(lines) if line.get("warm")), None)
        if role is None or warm is None or warm == len(lines) - 1:
            continue
        first, last = lines[warm], lines[-1]
        report[role] = {
            "pid": pid,
            "from_s": first["t_s"],
            "to_s": last["t_s"],
            "after_warmup": _figures(first),
            "end": _figures(last),
            "grew_most": _growth(folder, pid),
        }
    return report


def plot_heap(folder: Path, roles: Mapping[int, str], path: Path) -> None:
    """RSS, malloc's heap in use and the traced Python heap of each process over time, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {roles[pid]: lines for pid, lines in read_series(folder).items() if pid in roles and lines}
    if not series:
        return
    fig, axes = plt.subplots(len(series), 1, figsize=(9, 2.6 * len(series)), sharex=True, squeeze=False)
    for ax, (role, lines) in zip(axes[:, 0], sorted(series.items()), strict=True):
        minutes = [line["t_s"] / 60 for line in lines]
        figures = [_figures(line) for line in lines]
        for key, label in (
            ("rss_mib", "RSS"),
            ("malloc_in_use_mib", "malloc in use"),
            ("malloc_free_held_mib", "malloc free, held"),
            ("python_mib", "Python heap (tracemalloc)"),
        ):
            if key in figures[0]:
                ax.plot(minutes, [f[key] for f in figures], label=label)
        ax.set_title(role, fontsize=9)
        ax.set_ylabel("MiB")
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("minutes since the process started")
    fig.suptitle("Soak: where each server process's memory goes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_report(report: Mapping[str, dict]) -> list[str]:
    """Lines for the soak's printed report."""
    lines = []
    for role, r in sorted(report.items()):
        a, e = r["after_warmup"], r["end"]
        change = ", ".join(f"{k.removesuffix('_mib')} {a[k]:.1f} -> {e[k]:.1f}" for k in a)
        lines.append(f"  {role:<8} {r['from_s'] / 60:.0f}-{r['to_s'] / 60:.0f} min (MiB): {change}")
        lines.extend(f"           +{g['grew_kib']:.0f} KiB {g['where']}" for g in r["grew_most"][:3])
    return lines
