"""The processes of a running server under test: which is which, and what each has used."""

from __future__ import annotations

import psutil

from service.bentoml_compat import worker_service


def role_of(proc: psutil.Process) -> str:
    """runner, front, or manager (BentoML's process manager, which has no service)."""
    return {"model_runner": "runner", "image_classifier": "front"}.get(worker_service(proc) or "", "manager")


def tree(pid: int) -> list[psutil.Process]:
    """The process ``pid`` and all its descendants."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def pid_roles(pid: int) -> dict[int, str]:
    """pid -> role of the process ``pid`` and each of its descendants still alive."""
    roles = {}
    for proc in tree(pid):
        try:
            roles[proc.pid] = role_of(proc)
        except psutil.Error:  # exited between listing and reading
            continue
    return roles


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by the process ``pid`` and its descendants, per role."""
    totals: dict[str, float] = {}
    for proc in tree(pid):
        try:
            times, role = proc.cpu_times(), role_of(proc)
        except psutil.Error:
            continue
        totals[role] = totals.get(role, 0.0) + times.user + times.system
    return totals
