"""The soak's memory verdict: judged on the rise after a warm-up and the second half's slope, not on minute one."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from loadtests.soak import Sample, Sampler, default_warmup_s, report, rss_verdict


def _samples(front, runner=lambda t: 900.0, minutes: float = 40, every_s: float = 10) -> list[Sample]:
    out = []
    for k in range(int(minutes * 60 / every_s) + 1):
        t = k * every_s
        parts = {"manager": 800.0, "front": front(t), "runner": runner(t)}
        out += [Sample(t, role, rss) for role, rss in parts.items()]
        out.append(Sample(t, "total", sum(parts.values())))
    return out


def _steps_then_flat(t: float) -> float:
    return 800.0 + 20 * (t > 90) + 15 * (t > 320) + 10 * (t > 400)  # steps at 1.5, 5.3 and 6.7 minutes


def test_start_up_steps_then_flat_pass():
    verdict = rss_verdict(_samples(_steps_then_flat), default_warmup_s(40), bound_mib=32, max_slope=0.05)
    assert verdict["flat"] and verdict["roles"]["front"]["second_half_slope_mib_per_min"] == 0
    naive = rss_verdict(_samples(_steps_then_flat), 60, bound_mib=32, max_slope=0.05)
    assert not naive["rise_ok"]  # the rise from minute one would have failed it


def test_a_slow_climb_fails_on_the_second_half_slope_even_within_the_bound():
    verdict = rss_verdict(
        _samples(_steps_then_flat, runner=lambda t: 900 + 0.3 * t / 60), 600, bound_mib=32, max_slope=0.05
    )
    assert verdict["rise_ok"] and not verdict["slopes_ok"] and not verdict["flat"]
    assert verdict["roles"]["runner"]["second_half_slope_mib_per_min"] == pytest.approx(0.3, abs=1e-3)


def test_a_late_jump_fails_on_the_rise():
    verdict = rss_verdict(_samples(lambda t: 800 + 100 * (t > 1200)), 600, bound_mib=32, max_slope=0.05)
    assert not verdict["rise_ok"] and not verdict["flat"]


def test_the_report_says_what_was_judged():
    verdict = rss_verdict(_samples(_steps_then_flat), 600, bound_mib=32, max_slope=0.05)
    load = {"sent": 10, "offered_per_s": 1.0, "ok": 10, "p50_ms": 50, "p99_ms": 90, "max_ms": 99}
    host = {"cpu": "Some CPU", "cores": 2, "flags": ["avx2"], "torch": None, "onnxruntime": "1", "bentoml": "1"}
    text = report({"load": load, "rss": verdict, "capacity_req_per_s": 2, "failures": 0, "failure_examples": [],
                   "passed": True, "host": host, "server_settings": {"model_tag": "m:1"}})  # fmt: skip
    assert "rise after a 600 s warm-up" in text and "second half of the run, from 1200 s" in text
    assert "second-half slopes: ok" in text and text.endswith("passed")
    assert "Host: Some CPU, 2 cores" in text and "Server: model_tag=m:1" in text


def test_default_warm_up_is_a_third_of_the_run_up_to_ten_minutes():
    assert default_warmup_s(3) == 60 and default_warmup_s(120) == 600


def test_the_sampler_asks_for_the_warm_snapshot_after_the_warm_up_and_notes_roles(tmp_path: Path) -> None:
    sampler = Sampler(os.getpid(), every_s=0.05, warmup_s=1.5, trace=tmp_path)
    sampler.start()
    time.sleep(0.2)
    asked_early = (tmp_path / "warm").exists()
    deadline = time.monotonic() + 30
    while not (tmp_path / "warm").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    samples = sampler.stop()
    assert not asked_early and (tmp_path / "warm").exists()
    assert sampler.roles[os.getpid()] == "manager" and {s.role for s in samples} >= {"manager", "total"}
