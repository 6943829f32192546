"""Peak memory under the largest inputs the server accepts: what a replica's memory limit must cover.

    python -m loadtests.peak_memory --model-tag transfer-classifier:latest --clients 64

Starts a server, then sends bursts of the worst single-image requests its limits let through, each from
--clients concurrent clients, --rounds times: PNGs of just under CLASSIFIER_MAX_PIXELS (which cannot be
decoded at a reduced scale, as JPEGs are) and JPEGs of noise close to the body limit. Reports each server
process's peak resident memory (VmHWM, from /proc) at the start and after each burst; the sum of the
peaks bounds the replica's peak from above, counting each process at its own worst moment (the manager's is
at start-up, before any worker runs). Throughout, it also samples every process's memory together
(--sample-ms) and reports the largest total seen at one moment, a bound from below (a peak between samples
is missed): RSS, and PSS, which counts the pages the processes share (libraries) once, as a container's
memory accounting does (which also charges page cache and kernel memory). Writes peak_memory.json to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

from classifier.cli import DefaultsHelp
from classifier.imaging import DEFAULT_MAX_PIXELS
from loadtests.host import describe_host, host_line
from loadtests.openloop import setup_logging
from loadtests.processes import role_of, tree
from loadtests.servers import serve_process

logger = logging.getLogger("loadtests.peak_memory")
MIB = 1024 * 1024


def largest_png(max_pixels: int) -> bytes:
    """A PNG of just under ``max_pixels``, 4:3: a smooth gradient, so a few hundred KB of body."""
    width = int((max_pixels * 4 / 3) ** 0.5)
    height = (max_pixels - 1) // width
    row = np.linspace(0, 255, width, dtype=np.uint8)
    pixels = np.broadcast_to(row[None, :, None], (height, width, 3))
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(out, format="PNG")
    return out.getvalue()


def noisy_jpeg(target_bytes: int) -> bytes:
    """A JPEG of random noise (incompressible) of about ``target_bytes``: the most body per request."""
    rng = np.random.default_rng(0)
    side = 1024
    while True:
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side * 3 // 4, side, 3), dtype=np.uint8)).save(out, "JPEG", quality=95)
        if out.tell() >= target_bytes * 0.8 or side > 8192:
            return out.getvalue()
        side = int(side * (target_bytes / out.tell()) ** 0.5 * 0.95) + 16


def _kib_fields(pid: int, name: str) -> Iterator[tuple[str, dict[str, int]]]:
    """(role, {field: kB}) from /proc/<pid>/``name`` of the process ``pid`` and each of its descendants."""
    for proc in tree(pid):
        try:
            text = Path(f"/proc/{proc.pid}/{name}").read_text()
            role = role_of(proc)
        except (OSError, psutil.Error):  # exited between listing and reading
            continue
        yield role, {line.split(":")[0]: int(line.split()[1]) for line in text.splitlines() if line.endswith(" kB")}


def peaks(pid: int) -> dict[str, float]:
    """Peak resident MiB (VmHWM) of the server's processes, per role (summed where several share one)."""
    out: Counter[str] = Counter()
    for role, kib in _kib_fields(pid, "status"):
        out[role] += kib.get("VmHWM", 0) / 1024  # none for a zombie (a worker killed, not yet reaped)
    return {role: round(mib, 1) for role, mib in sorted(out.items())}


def memory_now(pid: int) -> dict[str, tuple[float, float]]:
    """(RSS, PSS) MiB of the server's processes at this moment, per role (summed where several share one)."""
    out: dict[str, tuple[float, float]] = {}
    for role, kib in _kib_fields(pid, "smaps_rollup"):
        rss, pss = out.get(role, (0.0, 0.0))
        out[role] = (rss + kib.get("Rss", 0) / 1024, pss + kib.get("Pss", 0) / 1024)
    return out


@dataclass
class ConcurrentPeak:
    """The largest total RSS and total PSS seen in one sample, with each role's share in that sample."""

    rss_mib: float = 0.0
    pss_mib: float = 0.0
    rss_by_role: dict[str, float] = field(default_factory=dict)
    pss_by_role: dict[str, float] = field(default_factory=dict)
    samples: int = 0

    def add(self, sample: dict[str, tuple[float, float]]) -> None:
        self.samples += 1
        rss, pss = sum(r for r, _ in sample.values()), sum(p for _, p in sample.values())
        if rss > self.rss_mib:
            self.rss_mib, self.rss_by_role = rss, {role: round(r, 1) for role, (r, _) in sorted(sample.items())}
        if pss > self.pss_mib:
            self.pss_mib, self.pss_by_role = pss, {role: round(p, 1) for role, (_, p) in sorted(sample.items())}

    def to_dict(self) -> dict:
        return {
            "rss_mib": round(self.rss_mib, 1),
            "rss_by_role": self.rss_by_role,
            "pss_mib": round(self.pss_mib, 1),
            "pss_by_role": self.pss_by_role,
            "samples": self.samples,
        }


@contextmanager
def sampling(read: Callable[[], dict[str, tuple[float, float]]], interval_s: float) -> Iterator[ConcurrentPeak]:
    """Calls ``read`` every ``interval_s`` in a thread while the block runs, keeping the peak of the totals; an
    error in ``read`` is raised when the block ends."""
    peak, stop, failed = ConcurrentPeak(), threading.Event(), []

    def loop() -> None:
        try:
            while True:
                peak.add(read())
                if stop.wait(interval_s):
                    return
        except Exception as exc:  # noqa: BLE001 - handed to the caller below
            failed.append(exc)

    thread = threading.Thread(target=loop, name="memory-sampler", daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()
    if failed:
        raise RuntimeError("the memory sampler failed") from failed[0]


async def burst(url: str, body: bytes, content_type: str, clients: int) -> Counter[int]:
    """``clients`` requests at once; how many got each status."""
    async with httpx.AsyncClient(timeout=300) as client:
        responses = await asyncio.gather(
            *(client.post(f"{url}/v1/predict", content=body, headers={"content-type": content_type})
              for _ in range(clients)),
            return_exceptions=True,
        )  # fmt: skip
    return Counter(r.status_code if isinstance(r, httpx.Response) else 0 for r in responses)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.peak_memory",
        description=__doc__.split("\n\n")[0],
        formatter_class=DefaultsHelp,
    )
    p.add_argument("--model-tag", default="transfer-classifier:latest", help="model of the server started")
    p.add_argument("--clients", type=int, default=64, help="requests sent at once in each burst")
    p.add_argument("--rounds", type=int, default=3, help="bursts of each kind")
    p.add_argument("--body-mib", type=float, default=16.0, help="size of the noise JPEGs (the body limit is 20 MiB)")
    p.add_argument("--sample-ms", type=float, default=50.0, help="interval of the concurrent memory samples")
    p.add_argument("--out", type=Path, default=Path("loadtests/results"), help="folder for peak_memory.json")
    return p


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    inputs = {
        "png_max_pixels": (largest_png(DEFAULT_MAX_PIXELS), "image/png"),
        "jpeg_noise": (noisy_jpeg(int(args.body_mib * MIB)), "image/jpeg"),
    }
    result: dict = {"host": describe_host(), "clients": args.clients, "inputs": {}, "bursts": []}
    for name, (body, _) in inputs.items():
        with Image.open(io.BytesIO(body)) as image:
            result["inputs"][name] = {"bytes": len(body), "pixels": image.width * image.height}
    with serve_process({"CLASSIFIER_MODEL_TAG": args.model_tag}) as server:
        pid = server.process.pid
        result["at_start"] = peaks(pid)
        result["engine"] = httpx.get(f"{server.url}/v1/model", timeout=30).json()["engine"]  # auto's choice, or named
        with sampling(lambda: memory_now(pid), args.sample_ms / 1000) as concurrent:
            for _ in range(args.rounds):
                for name, (body, content_type) in inputs.items():
                    statuses = asyncio.run(burst(server.url, body, content_type, args.clients))
                    row = {"input": name, "statuses": dict(statuses), "peak_mib": peaks(pid)}
                    result["bursts"].append(row)
                    logger.info("%s: %s, peaks %s", name, dict(statuses), row["peak_mib"])
    final = result["bursts"][-1]["peak_mib"]
    result["peak_total_mib"] = round(sum(final.values()), 1)
    result["concurrent_peak"] = concurrent.to_dict()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peak_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    print(host_line(result["host"]))
    print(f"inputs: {result['inputs']}")
    print(f"engine: {result['engine']}")
    print(f"peak RSS per process (MiB) at start {result['at_start']}, after all bursts {final}")
    print(f"sum of the peaks: {result['peak_total_mib']} MiB")
    print(
        f"largest total at one moment ({concurrent.samples} samples): RSS {concurrent.rss_mib:.1f} MiB "
        f"{concurrent.rss_by_role}, PSS {concurrent.pss_mib:.1f} MiB {concurrent.pss_by_role}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
