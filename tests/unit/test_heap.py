"""The soak's memory tracing: the hook every server process loads, and the report naming the lines that grew."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from loadtests.heap import HOOK, heap_report, names, plot_heap, read_series, trace_env, unknown_pids

# A process that asks for its own snapshots (as the soak does for the server's), growing in between.
GROWS = """import os, time
folder, pid = os.environ["SOAK_TRACE_DIR"], os.getpid()
def snapshot(name):
    open(os.path.join(folder, name), "w").close()
    while not os.path.exists(os.path.join(folder, f"{pid}-{name}.snap")):
        time.sleep(0.05)
snapshot("warm")
keep = [bytearray(50_000) for _ in range(40)]
snapshot("last")
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOAK_TRACE")}
    return {**env, "PYTHONPATH": str(HOOK), **extra}


def test_a_traced_process_names_the_line_that_grew(tmp_path: Path) -> None:
    env = trace_env(tmp_path / "trace", every_s=60)
    start = time.time()
    proc = subprocess.run([sys.executable, "-c", GROWS], env={**os.environ, **env}, timeout=60)
    assert proc.returncode == 0
    folder = Path(env["SOAK_TRACE_DIR"])
    ((pid, lines),) = read_series(folder).items()
    assert [sorted(k for k in ("warm", "last") if line.get(k)) for line in lines] == [["warm"], ["last"]]

    report = heap_report(folder, {pid: "front"}, start)["front"]
    assert 0 <= report["from_min"] <= report["to_min"] < 1
    grew = report["end"]["python_mib"] - report["after_warmup"]["python_mib"]
    assert 1.5 < grew < 2.5  # 40 x 50 KB, held
    assert report["grew_most"][0]["where"] == "<string>:8" and report["grew_most"][0]["grew_kib"] > 1900
    if "malloc_in_use_mib" in report["end"]:  # glibc 2.33 or later
        assert report["end"]["malloc_in_use_mib"] - report["after_warmup"]["malloc_in_use_mib"] > 1.5

    plot_heap(folder, {pid: "front"}, start, tmp_path / "heap.png")
    assert (tmp_path / "heap.png").stat().st_size > 10_000
    assert unknown_pids(folder, {pid: "front"}) == [] and unknown_pids(folder, {}) == [pid]
    assert heap_report(folder, {}, start) == {}  # a process the soak never saw is left out


def test_processes_sharing_a_role_are_told_apart() -> None:
    assert names({1: "runner", 2: "runner", 3: "front"}, [1, 2, 3, 4]) == {1: "runner-1", 2: "runner-2", 3: "front"}


def test_a_line_still_being_written_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "7.jsonl").write_text(json.dumps({"rss": 1}) + "\n" + '{"rss": ')
    assert read_series(tmp_path) == {7: [{"rss": 1}]}


def test_without_a_trace_folder_the_hook_does_nothing() -> None:
    code = (
        "import sitecustomize, threading, tracemalloc\n"
        "print(sitecustomize.__file__, tracemalloc.is_tracing(), threading.active_count())"
    )
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=True)
    hook, tracing, threads = out.stdout.split()
    assert Path(hook).parent == HOOK and (tracing, threads) == ("False", "1")
