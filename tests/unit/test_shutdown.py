"""Graceful shutdown: the runner serves while the front lives, both stop by the timeout and exit soon
after it (fake clock, no signals sent)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from service.bentoml_compat import service_name_of
from service.shutdown import FORCE_EXIT_AFTER_S, drain_then_stop, on_sigterm


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def drain(timeout_s, wait_while=None):
    clock, calls = Clock(), []
    drain_then_stop(
        lambda sig, _: calls.append((sig, round(clock.now, 2))),
        timeout_s,
        wait_while,
        clock=clock,
        sleep=clock.sleep,
        exit_now=lambda code: calls.append(("exit", code, round(clock.now, 2))),
    )
    return clock, calls


def test_the_runner_stops_once_the_front_is_gone_and_is_forced_at_the_timeout():
    front_exits_at = 3.0
    clock = Clock()
    calls = []
    drain_then_stop(
        lambda sig, _: calls.append((sig, round(clock.now, 2))),
        10,
        lambda: clock.now < front_exits_at,
        clock=clock,
        sleep=clock.sleep,
        exit_now=lambda code: calls.append(("exit", code, clock.now)),
    )
    (graceful, when), (forced, at), (_, code, exited) = calls
    assert graceful == signal.SIGTERM and front_exits_at <= when < front_exits_at + 0.2
    assert forced == signal.SIGINT and at >= 10  # uvicorn: SIGINT after SIGTERM = stop waiting
    assert code == 1 and exited >= at + FORCE_EXIT_AFTER_S  # the backstop if a thread still holds the process


def test_a_front_that_never_leaves_does_not_hold_the_runner_past_the_timeout():
    _, calls = drain(5, lambda: True)
    assert [c[0] for c in calls] == [signal.SIGTERM, signal.SIGINT, "exit"] and calls[0][1] >= 5


def test_the_front_stops_at_once():
    _, calls = drain(5)
    assert calls[0] == (signal.SIGTERM, 0.0)


def test_service_workers_alive_sees_a_sibling_by_its_service_name():
    # this process's parent is pytest's parent; start a sibling-like child and ask from a grandchild instead
    code = (
        "import sys, subprocess, time\n"
        "sib = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)', '--service-name', 'front'])\n"
        "probe = subprocess.run([sys.executable, '-c', 'from service.bentoml_compat import service_workers_alive as a; "
        'print(a("front")(), a("other")())\'], capture_output=True, text=True)\n'
        "sib.kill(); sib.wait()\n"
        "after = subprocess.run([sys.executable, '-c', 'from service.bentoml_compat import service_workers_alive as a; "
        'print(a("front")())\'], capture_output=True, text=True)\n'
        "print(probe.stdout.strip(), after.stdout.strip(), probe.stderr[-300:])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=os.getcwd()
    ).stdout.split()
    assert out[:3] == ["True", "False", "False"], out


def test_outside_a_server_the_handler_is_left_alone():
    before = signal.getsignal(signal.SIGTERM)
    on_sigterm(5)
    assert signal.getsignal(signal.SIGTERM) is before


def test_under_a_server_sigterm_is_routed_through_the_drain_once(monkeypatch):
    calls = []
    monkeypatch.setattr(signal, "getsignal", lambda _: lambda sig, frame: calls.append(sig))
    installed = []
    monkeypatch.setattr(signal, "signal", lambda sig, handler: installed.append((sig, handler)))
    monkeypatch.setattr("service.shutdown.FORCE_EXIT_AFTER_S", 60)  # the test ends before the backstop
    on_sigterm(0.01)
    ((sig, handler),) = installed
    assert sig == signal.SIGTERM
    handler(signal.SIGTERM, None)  # starts the drain thread; with nothing to wait for it stops at once
    handler(signal.SIGTERM, None)  # a second SIGTERM starts nothing more
    deadline = time.monotonic() + 5
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert calls == [signal.SIGTERM, signal.SIGINT]


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.mark.parametrize(
    "cmdline, name",
    [
        (["python", "-m", "w", "--service-name", "model_runner", "--fd", "3"], "model_runner"),
        (["python", "-m", "bentoml", "serve"], None),
        (["w", "--service-name"], None),
    ],
)
def test_service_name_of_a_worker(cmdline, name):
    assert service_name_of(cmdline) == name
