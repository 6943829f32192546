"""Graceful shutdown on SIGTERM, bounded by CLASSIFIER_GRACEFUL_TIMEOUT_S.

BentoML's process manager sends SIGTERM to every worker at once. Uvicorn then stops accepting
connections and finishes the requests it already has, with no time limit. Two gaps are closed here:
- the model runner would stop taking calls while the front still has requests to send it (queued,
  or still decoding), which would then fail; so the runner keeps serving until no front worker
  process is left, and only then lets uvicorn stop;
- a request stuck forever would hold the shutdown forever; so at the timeout every worker is told
  to stop at once, and exits a few seconds later whatever it is doing.
A second SIGTERM changes nothing: the first one's drain and deadline stand.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

FORCE_EXIT_AFTER_S = 5.0  # after uvicorn is told to stop now: long enough to close, short enough to matter
StopServer = Callable[[int, object], None]


def drain_then_stop(
    stop: StopServer,
    timeout_s: float,
    wait_while: Callable[[], bool] | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    exit_now: Callable[[int], None] = os._exit,
) -> None:
    """While ``wait_while()`` (if given), keep serving; then ask the server to stop gracefully. Once
    ``timeout_s`` have passed since the call, tell it to stop now (uvicorn: a SIGINT after a SIGTERM),
    and if the process still runs FORCE_EXIT_AFTER_S later (a request stuck in a thread), exit."""
    deadline = clock() + timeout_s
    while wait_while is not None and clock() < deadline and wait_while():
        sleep(0.05)
    stop(signal.SIGTERM, None)
    while clock() < deadline:  # a daemon thread: ends with the process when the shutdown finishes in time
        sleep(min(0.5, max(deadline - clock(), 0)))
    logger.warning("graceful shutdown took over %g s: stopping with requests still in flight", timeout_s)
    stop(signal.SIGINT, None)
    sleep(FORCE_EXIT_AFTER_S)
    logger.error("still running %g s after the graceful timeout: exiting now", FORCE_EXIT_AFTER_S)
    exit_now(1)


def on_sigterm(timeout_s: float, wait_while: Callable[[], bool] | None = None) -> None:
    """Route SIGTERM through drain_then_stop. Call from the worker's main thread once uvicorn has installed
    its handler (the service's ``__init__``); elsewhere (no uvicorn handler) it changes nothing."""
    stop = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or not callable(stop):
        return
    started = threading.Event()

    def handle(signum: int, frame: object) -> None:
        if started.is_set():
            return
        started.set()
        logger.info("SIGTERM: finishing in-flight requests (at most %g s)", timeout_s)
        threading.Thread(target=drain_then_stop, args=(stop, timeout_s, wait_while), daemon=True).start()

    signal.signal(signal.SIGTERM, handle)
