"""Trimming the allocator: the thread calls the trim on its interval and stops, and glibc's trim gives
freed memory back."""

from __future__ import annotations

import os
import threading

import pytest

from service.memory import glibc_trim, start_trimming


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_the_trim_runs_on_its_interval_until_stopped():
    calls = threading.Semaphore(0)

    def trim() -> bool:
        calls.release()
        return True

    stop = start_trimming(0.01, trim)
    assert stop is not None
    assert all(calls.acquire(timeout=5) for _ in range(3))
    stop.set()
    while calls.acquire(timeout=0.1):  # a call already under way may still land
        pass
    assert not calls.acquire(timeout=0.1)


def test_an_interval_of_zero_never_trims():
    before = {t.ident for t in threading.enumerate() if t.name == "malloc-trim"}
    assert start_trimming(0, lambda: True) is None
    assert {t.ident for t in threading.enumerate() if t.name == "malloc-trim"} == before  # no thread started


@pytest.mark.skipif(not os.path.exists("/proc/self/statm") or glibc_trim() is None, reason="needs Linux and glibc")
def test_glibc_trim_returns_freed_memory_that_malloc_kept():
    trim = glibc_trim()
    assert trim is not None
    chunks = [bytearray(2048) for _ in range(60_000)]  # ~120 MiB of malloc'd chunks, each under the mmap threshold
    pin = bytearray(2048)  # allocated last: the heap's top stays in use, so free() alone cannot shrink it
    del chunks
    held = _rss_mib()
    assert trim() is True
    assert held - _rss_mib() > 60, "malloc_trim(0) should give back most of the 120 MiB just freed"
    del pin
