"""service/call_cpu.py: the CPU of the model's batch calls, on every thread but the event loop's."""

from __future__ import annotations

import threading
import time

import pytest

from service.call_cpu import CallCpu

per_thread_clocks = pytest.mark.skipif(
    not hasattr(time, "pthread_getcpuclockid"), reason="no per-thread CPU clocks here (Windows, macOS)"
)


def _burn(seconds: float) -> None:
    """Keep this thread on a core for about ``seconds`` of its own CPU time."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def _in_a_thread(seconds: float) -> None:
    helper = threading.Thread(target=_burn, args=(seconds,))  # as an engine's pool thread
    helper.start()
    helper.join()


@per_thread_clocks
def test_a_calls_helper_threads_count_and_the_loop_threads_own_cpu_does_not():
    recorded: list[float] = []
    loop_thread = threading.get_ident()  # this thread plays the event loop's part
    cpu = CallCpu(recorded.append, loop_thread=loop_thread)
    with cpu.measure():
        _in_a_thread(0.2)
    with cpu.measure():
        _burn(0.2)  # the loop's own work while a call is under way: not the engine's
    assert len(recorded) == 2
    assert recorded[0] >= 0.15
    assert recorded[1] < 0.05


def test_overlapping_calls_are_counted_once():
    recorded: list[float] = []
    cpu = CallCpu(recorded.append, loop_thread=threading.get_ident())
    outer = cpu.measure()
    outer.__enter__()
    with cpu.measure():  # a second call starts while the first runs
        _in_a_thread(0.1)
    assert recorded == []  # nothing until the last call in progress ends
    _in_a_thread(0.1)
    outer.__exit__(None, None, None)
    assert len(recorded) == 1 and 0.15 <= recorded[0] < 0.28  # 0.2 s in all, not 0.3 (the overlap twice)


def test_a_failed_call_still_counts():
    recorded: list[float] = []
    cpu = CallCpu(recorded.append, loop_thread=threading.get_ident())
    try:
        with cpu.measure():
            _in_a_thread(0.1)
            raise RuntimeError("the engine failed")
    except RuntimeError:
        pass
    assert len(recorded) == 1 and recorded[0] >= 0.05


@per_thread_clocks
def test_by_default_the_main_threads_cpu_is_left_out():
    """BentoML's workers run their event loop in the main thread: its work beside a call is not the engine's."""
    assert threading.current_thread() is threading.main_thread()  # pytest runs tests in the main thread
    recorded: list[float] = []
    cpu = CallCpu(recorded.append)
    with cpu.measure():
        _burn(0.2)
    assert len(recorded) == 1 and recorded[0] < 0.05


def test_a_clock_that_fails_skips_the_figure_not_the_call(monkeypatch):
    recorded: list[float] = []
    cpu = CallCpu(recorded.append, loop_thread=threading.get_ident())

    def broken() -> float:
        raise OSError("invalid clock")

    monkeypatch.setattr(cpu, "_loop_cpu", broken)
    with cpu.measure():
        answer = 42  # the call itself goes on
    assert answer == 42 and recorded == []
