"""Graceful shutdown: the runner drains until idle, both stop by the timeout (fake clock, no signals sent)."""

from __future__ import annotations

import signal
import time

import pytest

from service.shutdown import QUIET_S, Activity, drain_then_stop, on_sigterm


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_activity_is_idle_only_between_batches():
    clock = Clock()
    activity = Activity(clock)
    with activity.busy():
        clock.sleep(5)
        assert activity.idle_for() == 0
    clock.sleep(0.3)
    assert activity.idle_for() == pytest.approx(0.3)


def test_the_runner_stops_once_idle_then_is_forced_at_the_timeout():
    clock, calls = Clock(), []
    busy_until = 3.0  # the front keeps sending for 3 s after SIGTERM

    def idle_for() -> float:
        return 0.0 if clock.now < busy_until else clock.now - busy_until

    drain_then_stop(lambda sig, _: calls.append((sig, round(clock.now, 2))), 10, idle_for, clock=clock, sleep=clock.sleep)
    (graceful, when), (forced, at) = calls
    assert graceful == signal.SIGTERM and busy_until + QUIET_S <= when < busy_until + QUIET_S + 0.2
    assert forced == signal.SIGINT and at >= 10  # uvicorn: SIGINT after SIGTERM = exit now


def test_a_runner_that_never_idles_still_stops_by_the_timeout():
    clock, calls = Clock(), []
    drain_then_stop(lambda sig, _: calls.append((sig, clock.now)), 5, lambda: 0.0, clock=clock, sleep=clock.sleep)
    assert [sig for sig, _ in calls] == [signal.SIGTERM, signal.SIGINT] and calls[0][1] >= 5


def test_the_front_stops_at_once():
    clock, calls = Clock(), []
    drain_then_stop(lambda sig, _: calls.append((sig, clock.now)), 5, clock=clock, sleep=clock.sleep)
    assert calls[0] == (signal.SIGTERM, 0.0)


def test_outside_a_server_the_handler_is_left_alone():
    before = signal.getsignal(signal.SIGTERM)
    on_sigterm(5)
    assert signal.getsignal(signal.SIGTERM) is before


def test_under_a_server_sigterm_is_routed_through_the_drain(monkeypatch):
    calls = []
    monkeypatch.setattr(signal, "getsignal", lambda _: lambda sig, frame: calls.append(sig))
    installed = []
    monkeypatch.setattr(signal, "signal", lambda sig, handler: installed.append((sig, handler)))
    on_sigterm(0.01)
    ((sig, handler),) = installed
    assert sig == signal.SIGTERM
    handler(signal.SIGTERM, None)  # starts the drain thread; with no idle check it stops at once
    deadline = time.monotonic() + 5
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert calls == [signal.SIGTERM, signal.SIGINT]
