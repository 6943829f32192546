"""The peers our service is measured against in the benchmark, each as its users typically deploy it, on the
same model, host, photos and load: TorchServe 0.12 (loadtests/peers/torchserve.py) and Triton Inference Server
through nvidia-pytriton 0.7 (loadtests/peers/triton.py).

Each peer gets a virtual environment of its own under the cache folder (nothing global), created on first use by
the functions here; a peer whose packages cannot be installed raises PeerUnavailable with pip's reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from classifier.cache import default_cache_dir


class PeerUnavailable(RuntimeError):
    """A peer cannot be set up here (a package that cannot be installed, Java missing); the message says why."""


def peer_root() -> Path:
    return default_cache_dir() / "peers"


def ensure_venv(name: str, packages: list[str], *, python: str = sys.executable) -> Path:
    """The python of virtual environment ``name`` under peer_root() with ``packages`` installed (once: a marker
    file records what was installed, and a different list installs again)."""
    folder = peer_root() / name
    marker, bin_python = folder / "installed.json", folder / "bin" / "python"
    if marker.is_file() and json.loads(marker.read_text()) == packages and bin_python.exists():
        return bin_python
    subprocess.run([python, "-m", "venv", "--clear", str(folder)], check=True)
    steps = [["--upgrade", "pip"], packages]
    for step in steps:
        done = subprocess.run(
            [str(bin_python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *step],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
            raise PeerUnavailable(f"cannot install {' '.join(step)} for {name}:\n{tail}")
    marker.write_text(json.dumps(packages))
    return bin_python
