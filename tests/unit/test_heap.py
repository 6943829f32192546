"""The soak's memory tracing: the hook every server process loads, and the report naming the lines that grew."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from loadtests.heap import heap_report, plot_heap, read_series
from loadtests.servers import REPO

HOOK = REPO / "loadtests" / "tracehook"
GROWS = "import time\nkeep = []\nfor _ in range(40):\n    keep.append(bytearray(50_000))\n    time.sleep(0.05)\n"


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(HOOK), **env}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)


def test_a_traced_process_names_the_line_that_grew(tmp_path: Path) -> None:
    env = {"SOAK_TRACE_DIR": str(tmp_path), "SOAK_TRACE_EVERY_S": "0.2", "SOAK_TRACE_WARMUP_S": "0.5"}
    proc = subprocess.Popen([sys.executable, "-c", GROWS], env={**os.environ, "PYTHONPATH": str(HOOK), **env})
    assert proc.wait(timeout=60) == 0
    (lines,) = read_series(tmp_path).values()
    assert len(lines) >= 4 and sum(bool(line.get("warm")) for line in lines) == 1
    assert {(tmp_path / f"{proc.pid}-{name}.snap").is_file() for name in ("warm", "last")} == {True}

    report = heap_report(tmp_path, {proc.pid: "front"})["front"]
    grew = report["end"]["python_mib"] - report["after_warmup"]["python_mib"]
    assert grew > 0.3  # about 50 KB every 50 ms for the second or so between the snapshots
    assert report["grew_most"][0]["where"] == "<string>:4"
    assert report["end"]["malloc_in_use_mib"] > report["after_warmup"]["malloc_in_use_mib"]

    plot_heap(tmp_path, {proc.pid: "front"}, tmp_path / "heap.png")
    assert (tmp_path / "heap.png").stat().st_size > 10_000


def test_processes_outside_the_roles_are_left_out(tmp_path: Path) -> None:
    _run(GROWS, {"SOAK_TRACE_DIR": str(tmp_path), "SOAK_TRACE_EVERY_S": "0.2", "SOAK_TRACE_WARMUP_S": "0"})
    assert read_series(tmp_path) and heap_report(tmp_path, {}) == {}


def test_without_a_trace_folder_the_hook_does_nothing() -> None:
    out = _run("import tracemalloc, threading; print(tracemalloc.is_tracing(), threading.active_count())", {})
    assert out.stdout.split() == ["False", "1"]
