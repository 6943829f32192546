"""The machine a benchmark ran on: CPU model, cores, the instruction sets that decide which engine is fastest
(AVX2, AVX-512, VNNI, AMX) and the versions of the libraries that run the model. Recorded with every result."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")
PACKAGES = ("torch", "onnxruntime", "openvino", "bentoml")


def describe_host(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """{"cpu", "cores", "flags" (those of FLAGS the CPU has), "python", and each of PACKAGES' version}."""
    model, flags = platform.processor() or "unknown", set()
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "flags": [f for f in FLAGS if f in flags],
        "python": platform.python_version(),
        **versions,
    }


def host_line(host: dict) -> str:
    """One line for a report: 'Host: <cpu>, <n> cores, flags ..., torch x, onnxruntime y, bentoml z.'"""
    flags = ", ".join(host["flags"]) or "none of " + ", ".join(FLAGS)
    libs = ", ".join(f"{p} {host.get(p)}" for p in PACKAGES)
    return f"Host: {host['cpu']}, {host['cores']} cores, CPU flags: {flags}; {libs}."
