"""The peak-memory run's measures: the largest total at one moment (not the sum of each process's own peak),
and the worst inputs it sends."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading

import psutil
import pytest
from PIL import Image

from loadtests.peak_memory import ConcurrentPeak, largest_png, memory_now, noisy_jpeg, peaks, sampling


def test_the_concurrent_peak_is_the_largest_total_of_one_sample_not_the_sum_of_each_role_s_peak():
    peak = ConcurrentPeak()
    peak.add({"manager": (300.0, 200.0), "front": (500.0, 400.0)})  # the manager's start-up peak
    peak.add({"manager": (100.0, 50.0), "front": (900.0, 800.0)})  # a burst, after the manager gave it back
    peak.add({"manager": (100.0, 50.0), "front": (200.0, 150.0)})
    assert peak.rss_mib == 1000.0 and peak.rss_by_role == {"front": 900.0, "manager": 100.0}
    assert peak.pss_mib == 850.0 and peak.pss_by_role == {"front": 800.0, "manager": 50.0}
    assert peak.samples == 3
    assert peak.to_dict()["rss_mib"] < 300 + 900  # what summing each role's own peak (VmHWM) would say


def test_sampling_reads_until_the_block_ends_and_keeps_a_spike_between_bursts():
    calls, spiked = [], threading.Event()

    def read() -> dict[str, tuple[float, float]]:
        calls.append(1)
        if len(calls) == 3:
            spiked.set()
            return {"front": (700.0, 600.0)}
        return {"front": (100.0, 90.0)}

    with sampling(read, interval_s=0.001) as peak:
        assert spiked.wait(10)
    after = len(calls)
    assert peak.rss_mib == 700.0 and peak.pss_mib == 600.0
    assert peak.samples == after >= 3
    threading.Event().wait(0.05)
    assert len(calls) == after  # the thread stopped with the block


@pytest.fixture
def lone_process():
    """A child process with no children of its own (this one may have some: servers of session-scoped fixtures)."""
    script = "import sys; print('ready', flush=True); sys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline() == "ready\n"  # started: its memory stays put now
    yield psutil.Process(child.pid)
    child.kill()
    child.wait()


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="needs Linux's /proc/<pid>/smaps_rollup")
def test_memory_now_and_peaks_read_a_process(lone_process):
    (rss, pss), *others = memory_now(lone_process.pid).values()  # a "manager", having no service
    assert not others
    actual = lone_process.memory_info().rss / 2**20
    assert rss == pytest.approx(actual, rel=0.2) and 0 < pss <= rss
    assert list(peaks(lone_process.pid)) == ["manager"] and peaks(lone_process.pid)["manager"] >= round(rss, 1) - 1


def test_the_largest_png_is_just_under_the_pixel_limit():
    body = largest_png(1_000_000)
    with Image.open(io.BytesIO(body)) as image:
        assert image.format == "PNG" and 0.99e6 < image.width * image.height < 1e6


def test_the_noise_jpeg_comes_close_to_the_body_size_asked_for():
    body = noisy_jpeg(300_000)
    assert body[:2] == b"\xff\xd8" and len(body) >= 0.8 * 300_000


def test_a_sampler_that_fails_says_so_when_the_block_ends():
    def read() -> dict[str, tuple[float, float]]:
        raise FileNotFoundError("the server's root process is gone")

    with pytest.raises(RuntimeError, match="memory sampler failed") as info, sampling(read, interval_s=0.001):
        pass
    assert isinstance(info.value.__cause__, FileNotFoundError)
