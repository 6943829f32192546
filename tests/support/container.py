"""Building and running the project's image with podman where no Docker engine runs, for the container test.

Podman runs here with ``--runtime runc --cgroup-manager cgroupfs`` (crun refuses this kernel's cgroups) and
explicit ulimits. The base image is made locally by deploy/container/base-image.sh, once per machine. Builds reach
the package index the way this machine's pip does: its certificate bundle and index are passed in a pip
configuration mounted into the build.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import certifi

from loadtests.servers import REPO

BASE_IMAGE = "localhost/transfer-serve-base:bookworm"
PODMAN = ("podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs")


def missing() -> str | None:
    """Why containers cannot be built and run here, or None."""
    absent = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]
    if absent:
        return f"{', '.join(absent)} not installed (.ci/run installs them from Debian)"
    if os.geteuid() != 0:
        return "debootstrap needs root"
    return None


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def make_base_image() -> str:
    subprocess.run([str(REPO / "deploy" / "container" / "base-image.sh"), BASE_IMAGE], check=True, timeout=900)
    return BASE_IMAGE


def _pip_config(folder: Path) -> tuple[Path, list[str]]:
    """A pip.conf for the build (this machine's index and certificate bundle), and the volumes that carry it."""
    cert = os.environ.get("PIP_CERT") or _pip_setting("global.cert") or certifi.where()  # certifi: pip's own default
    lines = ["[global]", "cert = /etc/ssl/certs/host-ca-certificates.crt"]
    if index := os.environ.get("PIP_INDEX_URL") or _pip_setting("global.index-url"):
        lines.append(f"index-url = {index}")
    conf = folder / "pip.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf, ["-v", f"{conf}:/etc/pip.conf:ro", "-v", f"{cert}:/etc/ssl/certs/host-ca-certificates.crt:ro"]


def _pip_setting(name: str) -> str | None:
    found = subprocess.run([sys.executable, "-m", "pip", "config", "get", name], capture_output=True, text=True)
    if found.returncode != 0:
        return None
    return found.stdout.strip() or None


def dangling_images() -> set[str]:
    """Untagged images, such as the Dockerfile's first stage leaves (800 MB each)."""
    return set(podman("images", "--quiet", "--no-trunc", "--filter", "dangling=true").stdout.split())


def build_image(bento_archive: Path, tag: str, work: Path, *build_args: str) -> None:
    """Build ``tag`` with the project's Dockerfile from an exported Bento, on the local base image."""
    context = work / "context"
    (context / "build").mkdir(parents=True)
    shutil.copy(REPO / "Dockerfile", context / "Dockerfile")
    shutil.copy(REPO / ".dockerignore", context / ".dockerignore")
    shutil.copy(bento_archive, context / "build" / "image_classifier.bento")
    _, volumes = _pip_config(work)
    args = ["--build-arg", f"PYTHON_IMAGE={make_base_image()}", *[a for b in build_args for a in ("--build-arg", b)]]
    podman("build", "--format", "docker", "--network", "host", *volumes, *args, "-t", tag, str(context), timeout=1500)


def ulimits() -> list[str]:
    """runc sets every limit it is given and may not raise one past this process's hard limit."""
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 4096)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]
