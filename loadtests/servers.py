"""Start a BentoML server with `bentoml serve` on a free loopback port and wait until it is ready.

Used by the benchmark and by the integration tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def private_home() -> Path:
    """A BENTOML_HOME that shares the session's models and bentos but not BentoML's Prometheus folder.

    BentoML keeps its multiprocess metrics in $BENTOML_HOME/prometheus_multiproc_dir and clears it
    when a server starts, so two servers on one home would wipe each other's metrics.
    """
    shared = Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")
    home = Path(tempfile.mkdtemp(prefix="bentoml-home-"))
    for sub in ("models", "bentos"):
        (shared / sub).mkdir(parents=True, exist_ok=True)
        (home / sub).symlink_to(shared / sub)
    return home


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextlib.contextmanager
def run_until_ready(
    command: list[str],
    probe_url: str,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 180,
    ready: Callable[[bytes], bool] = lambda body: True,
) -> Iterator[subprocess.Popen]:
    """Start ``command`` and yield it once ``probe_url`` answers 200 with a body ``ready`` accepts (polled, never a
    fixed sleep); stop it afterwards (SIGTERM, then SIGKILL after 60 s). Its output is shown if it fails to start."""
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while not _answers(probe_url, ready):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"{command[0]} did not become ready:\n{log.read()[-4000:]}")
            time.sleep(0.5)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the whole session: TorchServe's Java and its Python workers
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _answers(url: str, ready: Callable[[bytes], bool]) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200 and ready(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@dataclass(frozen=True)
class RunningServer:
    url: str
    process: subprocess.Popen  # `bentoml serve`: BentoML's process manager, parent of the worker processes
    log: Path


@contextlib.contextmanager
def serve(
    env: dict[str, str],
    *,
    target: str = "service.service:ImageClassifier",
    timeout: float = 180,
    log_path: Path | None = None,
) -> Iterator[str]:
    """Yield the base URL of a running server; stop it afterwards. See serve_process."""
    with serve_process(env, target=target, timeout=timeout, log_path=log_path) as server:
        yield server.url


PORT_ATTEMPTS = 3  # a port can be taken between being found free and being bound: ours, or circus's ZMQ ports


class PortTaken(RuntimeError):
    """The server stopped at start-up because a port it chose was taken meanwhile."""


@contextlib.contextmanager
def serve_process(
    env: dict[str, str],
    *,
    target: str = "service.service:ImageClassifier",
    timeout: float = 180,
    log_path: Path | None = None,
) -> Iterator[RunningServer]:
    """Start `bentoml serve` and yield it once ready; stop it afterwards. Polls /readyz, never a fixed sleep.

    ``env`` is added to this process's environment; the server gets its own BENTOML_HOME that
    shares the current one's models (see private_home). The server's output goes to ``log_path`` if
    given, else to a temporary file, shown when it fails to start. A start that fails on a port taken
    meanwhile (another process bound it after it was found free) is tried again on other ports.
    """
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            with _serve_once(env, target=target, timeout=timeout, log_path=log_path) as server:
                yield server
            return
        except PortTaken:
            if attempt == PORT_ATTEMPTS:
                raise


@contextlib.contextmanager
def _serve_once(env: dict[str, str], *, target: str, timeout: float, log_path: Path | None) -> Iterator[RunningServer]:
    port = free_port()
    home = private_home()
    if log_path is None:
        log_path = home / "server.log"
    log = open(log_path, "w+")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO,
        env={**os.environ, "BENTOML_HOME": str(home), **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while not _ready(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                output = log.read()
                failure = PortTaken if proc.poll() is not None and "Address already in use" in output else RuntimeError
                raise failure(f"server did not become ready:\n{output[-4000:]}")
            time.sleep(0.5)
        yield RunningServer(url, proc, Path(log_path))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=90)  # a graceful shutdown finishes in-flight requests first
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(home, ignore_errors=True)
