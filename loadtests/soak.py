"""Soak run: minutes of steady load at a share of capacity, watching the server's memory.

    python -m loadtests.soak --minutes 10           # starts its own server on the newest model

Offers open-loop Poisson load at --share of the measured capacity and samples the resident memory
(RSS) of every server process (BentoML's manager, the front, the model runner) meanwhile. Passes when
every request got a 200 and memory levels off, judged on what matters rather than the rise from minute
one: the total RSS never rises more than --rss-bound-mib above its level at the end of a warm-up long
enough to cover the start-up steps (--warmup-seconds, default a third of the run, at most 10 minutes), and
every process's RSS grows by at most --max-slope-mib-per-min over the second half of the run (least
squares). Writes soak.json, soak.csv (RSS samples) and soak.png to --out.

With --trace-memory every server process also traces its Python allocations and glibc's heap
(loadtests/tracehook): the report adds, per process, the Python heap, malloc's heap in use and held free,
and the source lines that grew most after the warm-up, and soak-heap.png plots them. Tracing slows the
server and adds to its memory: judge a release by an untraced run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psutil

from classifier.cli import DefaultsHelp
from loadtests.heap import (
    ask_snapshot,
    format_report,
    heap_report,
    plot_heap,
    trace_env,
    unknown_pids,
    wait_for_snapshots,
)
from loadtests.host import describe_host, host_line
from loadtests.openloop import (
    Phase,
    add_run_arguments,
    json_safe,
    measure_capacity,
    offer,
    photo_bodies,
    setup_logging,
    summarize,
    timeline,
)
from loadtests.processes import pid_roles
from loadtests.servers import serve_process

logger = logging.getLogger("loadtests.soak")
MIB = 1024 * 1024


@dataclass(frozen=True)
class Sample:
    t_s: float
    role: str  # manager, front, runner, or total
    rss_mib: float


def sample_rss(roles: Mapping[int, str], t_s: float) -> list[Sample]:
    """RSS of the processes ``roles`` names (pid -> role), per role and in total."""
    by_role: dict[str, float] = {}
    for pid, role in roles.items():
        try:
            rss = psutil.Process(pid).memory_info().rss / MIB
        except psutil.Error:  # exited between listing and reading
            continue
        by_role[role] = by_role.get(role, 0.0) + rss
    return [Sample(t_s, role, rss) for role, rss in sorted(by_role.items())] + [
        Sample(t_s, "total", sum(by_role.values()))
    ]


class Sampler(threading.Thread):
    """Samples the tree every ``every_s`` seconds until stopped, noting every process's role as it goes; with
    ``trace`` (--trace-memory's folder), asks the traced processes for a snapshot once ``warmup_s`` has passed."""

    def __init__(self, pid: int, every_s: float, warmup_s: float, trace: Path | None) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s, self.warmup_s, self.trace = pid, every_s, warmup_s, trace
        self.samples: list[Sample] = []
        self.roles: dict[int, str] = {}  # every process seen, workers replaced during the run included
        self._stop_event, self._start, self.start_time = threading.Event(), time.monotonic(), time.time()

    def run(self) -> None:
        while not self._stop_event.is_set():
            t_s = time.monotonic() - self._start
            roles = pid_roles(self.pid)  # one walk of the tree gives both the roles and what to sample
            self.roles.update(roles)
            self.samples.extend(sample_rss(roles, t_s))
            if self.trace is not None and t_s >= self.warmup_s:
                ask_snapshot(self.trace, "warm")
            self._stop_event.wait(self.every_s)

    def stop(self) -> list[Sample]:
        self._stop_event.set()
        self.join()
        return self.samples


MAX_WARMUP_S = 600.0  # start-up steps were seen up to minute 7 of a 35-minute soak


def default_warmup_s(minutes: float) -> float:
    """A third of the run, at most 10 minutes."""
    return min(MAX_WARMUP_S, minutes * 60 / 3)


def _slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares MiB per minute of (seconds, MiB) points; nan with fewer than 3."""
    if len(points) < 3:
        return float("nan")
    t, rss = np.array(points).T
    return float(np.polyfit(t / 60, rss, 1)[0])


def rss_verdict(samples: Sequence[Sample], warmup_s: float, bound_mib: float, max_slope: float) -> dict:
    """Per role: RSS at the end of the warm-up, the largest rise above it afterwards, the trend after warm-up
    and the slope over the second half of the run (least squares, MiB/min). ``flat`` when the total rose at
    most ``bound_mib`` after the warm-up and every process's second-half slope is at most ``max_slope``;
    ``judged`` says so in words."""
    half_s = max(s.t_s for s in samples) / 2 if samples else 0.0
    verdict: dict = {
        "warmup_s": warmup_s,
        "bound_mib": bound_mib,
        "second_half_from_s": round(half_s, 1),
        "max_slope_mib_per_min": max_slope,
        "judged": f"the total's rise after a {warmup_s:g} s warm-up (at most {bound_mib:g} MiB) and each "
        f"process's slope over the second half of the run, from {half_s:.0f} s (at most {max_slope:g} MiB/min)",
        "roles": {},
    }
    for role in sorted({s.role for s in samples}):
        mine = [(s.t_s, s.rss_mib) for s in samples if s.role == role]
        after = [(t, rss) for t, rss in mine if t >= warmup_s]
        if len(after) < 2:
            continue
        rss = np.array([r for _, r in after])
        verdict["roles"][role] = {
            "after_warmup_mib": round(float(rss[0]), 1),
            "end_mib": round(float(rss[-1]), 1),
            "max_rise_mib": round(float(rss.max() - rss[0]), 1),
            "trend_mib_per_min": round(_slope(after), 3),
            "second_half_slope_mib_per_min": round(_slope([(t, r) for t, r in mine if t >= half_s]), 3),
        }
    roles = verdict["roles"]
    total = roles.get("total")
    processes = [r for name, r in roles.items() if name != "total"]
    rise_ok = bool(total and total["max_rise_mib"] <= bound_mib)
    slopes_ok = bool(processes) and all(r["second_half_slope_mib_per_min"] <= max_slope for r in processes)
    verdict.update(rise_ok=rise_ok, slopes_ok=slopes_ok, flat=rise_ok and slopes_ok)
    return verdict


def server_settings(args: argparse.Namespace) -> dict[str, str]:
    """What the server ran with: the model, and every CLASSIFIER_ and MALLOC_ variable it inherited."""
    inherited = {
        k: v
        for k, v in os.environ.items()
        if k.startswith(("CLASSIFIER_", "MALLOC_")) and k != "CLASSIFIER_MODEL_TAG"  # --model-tag overrides it
    }
    return {"model_tag": args.model_tag, **dict(sorted(inherited.items()))}


def plot(samples: Sequence[Sample], latency_rows: list[dict], warmup_s: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for role in sorted({s.role for s in samples}):
        mine = [s for s in samples if s.role == role]
        top.plot([s.t_s / 60 for s in mine], [s.rss_mib for s in mine], label=role)
    top.axvline(warmup_s / 60, color="0.5", linestyle="--", label="end of warm-up")
    top.set_ylabel("RSS (MiB)")
    top.legend(fontsize=8)
    bottom.plot([r["t_s"] / 60 for r in latency_rows], [r["p50_ms"] for r in latency_rows], label="p50")
    bottom.plot([r["t_s"] / 60 for r in latency_rows], [r["p99_ms"] for r in latency_rows], label="p99")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("minutes")
    bottom.legend(fontsize=8)
    fig.suptitle("Soak: steady open-loop load, server memory and latency")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(url: str, pid: int, args: argparse.Namespace) -> tuple[dict, Sampler]:
    """Measure the capacity, hold the load, judge the memory; writes soak.csv, soak.png and soak.json."""
    bodies = photo_bodies(args.photos)
    capacity = args.capacity or measure_capacity(url, bodies, seconds=args.capacity_seconds)
    phase = Phase("steady", args.minutes * 60, capacity * args.share)
    logger.info("capacity %.1f req/s; soaking at %.1f req/s for %g min", capacity, phase.rate, args.minutes)
    warmup_s = args.warmup_seconds if args.warmup_seconds is not None else default_warmup_s(args.minutes)
    trace = trace_dir(args) if args.trace_memory else None
    sampler = Sampler(pid, args.sample_seconds, warmup_s, trace)
    sampler.start()
    outcomes = offer(url, [phase], bodies, timeout=args.client_timeout, seed=args.seed)
    if trace is not None:
        ask_snapshot(trace, "last")
        if not wait_for_snapshots(trace, list(pid_roles(pid)), "last", timeout_s=120):
            logger.warning("not every traced process wrote its last snapshot in 120 s: those are left out")
    samples = sampler.stop()
    (summary,) = summarize(outcomes, [phase])
    verdict = rss_verdict(samples, warmup_s, args.rss_bound_mib, args.max_slope_mib_per_min)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "soak.csv").open("w") as f:
        f.write("t_s,role,rss_mib\n")
        f.writelines(f"{s.t_s:.1f},{s.role},{s.rss_mib:.1f}\n" for s in samples)
    plot(samples, timeline(outcomes, window_s=10), warmup_s, args.out / "soak.png")
    failures = summary.sent - summary.ok
    result = {
        "host": describe_host(),
        "server_settings": server_settings(args),
        "capacity_req_per_s": round(capacity, 2),
        "load": asdict(summary),
        "failures": failures,
        "failure_examples": sorted({f"{o.status} {o.error or o.reason}" for o in outcomes if o.status != 200})[:5],
        "rss": verdict,
        "passed": failures == 0 and verdict["flat"],
    }
    write_json(result, args.out)
    return result, sampler


def write_json(result: dict, out: Path) -> None:
    (out / "soak.json").write_text(json.dumps(json_safe(result), indent=2, allow_nan=False) + "\n")


def add_heap(result: dict, sampler: Sampler, args: argparse.Namespace) -> None:
    """--trace-memory: the traced figures per process into the result and soak.json, and soak-heap.png.
    Run once the server has stopped, so no trace is still being written."""
    trace = trace_dir(args)
    result["heap"] = heap_report(trace, sampler.roles, sampler.start_time)
    plot_heap(trace, sampler.roles, sampler.start_time, args.out / "soak-heap.png")
    if unknown := unknown_pids(trace, sampler.roles):
        logger.warning("traced processes the soak never saw in the server's tree, left out: %s", unknown)
    write_json(result, args.out)


def report(result: dict) -> str:
    load, rss = result["load"], result["rss"]
    lines = [
        host_line(result["host"]) if "host" in result else "Host: not recorded",
        f"Server: {', '.join(f'{k}={v}' for k, v in result.get('server_settings', {}).items())}",
        f"{load['sent']} requests at {load['offered_per_s']:.1f}/s ({result['capacity_req_per_s']} capacity): "
        f"{load['ok']} ok, {result['failures']} failed {result['failure_examples']}; "
        f"p50 {load['p50_ms']:.0f} ms, p99 {load['p99_ms']:.0f} ms, max {load['max_ms']:.0f} ms",
        f"Judged on {rss['judged']}:",
    ]
    for role, r in rss["roles"].items():
        lines.append(
            f"  {role:<8} {r['after_warmup_mib']:>8.1f} -> {r['end_mib']:>8.1f} MiB, largest rise "
            f"{r['max_rise_mib']:>6.1f} MiB, trend {r['trend_mib_per_min']:+.3f} MiB/min, second half "
            f"{r['second_half_slope_mib_per_min']:+.3f} MiB/min"
        )
    lines.append(
        f"rise after warm-up: {'ok' if rss['rise_ok'] else 'TOO HIGH'}; second-half slopes: "
        f"{'ok' if rss['slopes_ok'] else 'TOO STEEP'}; failures: {result['failures']}"
    )
    if "heap" in result:
        lines.append("Traced (warm-up snapshot -> last), per process:")
        lines.extend(format_report(result["heap"]))
    lines.append("passed" if result["passed"] else "FAILED")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.soak",
        description=__doc__.split("\n\n")[0],
        formatter_class=DefaultsHelp,
    )
    p.add_argument("--minutes", type=float, default=10.0, help="length of the steady load")
    p.add_argument("--share", type=float, default=0.5, help="load as a share of the measured capacity")
    p.add_argument(
        "--warmup-seconds",
        type=float,
        default=None,
        help="RSS before this is not held to the bound (default: a third of the run, at most 10 minutes)",
    )
    p.add_argument("--rss-bound-mib", type=float, default=32.0, help="largest allowed rise of the total RSS")
    p.add_argument(
        "--max-slope-mib-per-min",
        type=float,
        default=0.05,
        help="largest allowed growth of each process's RSS over the second half of the run",
    )
    p.add_argument("--sample-seconds", type=float, default=5.0, help="RSS sampling interval")
    p.add_argument(
        "--trace-memory",
        action="store_true",
        help="trace each server process's Python heap and glibc's heap (slower; for finding growth, not judging it)",
    )
    p.add_argument("--trace-seconds", type=float, default=60.0, help="interval of the traces with --trace-memory")
    add_run_arguments(p)
    return p


def trace_dir(args: argparse.Namespace) -> Path:
    return args.out / "trace"


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    env = {"CLASSIFIER_MODEL_TAG": args.model_tag}
    if args.trace_memory:
        env.update(trace_env(trace_dir(args), args.trace_seconds))
    with serve_process(env) as server:
        result, sampler = run(server.url, server.process.pid, args)
    if args.trace_memory:
        add_heap(result, sampler, args)
    print(report(result))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
