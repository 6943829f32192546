"""Overload run: normal load, then about 3x capacity, then normal again; every request must be answered.

    python -m loadtests.overload                       # starts its own server on the newest model
    python -m loadtests.overload --url http://127.0.0.1:3000 --capacity 18

Measures the server's capacity (closed loop) unless given, then offers open-loop Poisson load in
three phases and checks that every request got a 200 or a 503 with Retry-After (none lost, none
hung, nothing else), and that latency returns to its normal level once the overload ends.
Writes overload.json (summary), overload.csv (per second) and overload.png to --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from classifier.cli import DefaultsHelp
from loadtests.openloop import (
    Outcome,
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
from loadtests.servers import serve

logger = logging.getLogger("loadtests.overload")
RECOVERED_P50_RATIO = 1.5  # "normal latency": a window's p50 within 1.5x the p50 before the overload


def recovery_seconds(
    outcomes: Sequence[Outcome], baseline_p50_s: float, overload_end_s: float, window_s: float = 5.0
) -> float | None:
    """Seconds after the overload ended from which every window of the rest of the run has no 503 and a
    p50 within RECOVERED_P50_RATIO of ``baseline_p50_s``; None if that never happens."""
    after = [o for o in outcomes if o.sent_s >= overload_end_s]
    if not after:
        return None
    windows = int((max(o.sent_s for o in after) - overload_end_s) // window_s) + 1

    def normal(k: int) -> bool:
        mine = [o for o in after if k <= (o.sent_s - overload_end_s) / window_s < k + 1]
        ok = sorted(o.latency_s for o in mine if o.status == 200)
        return all(o.status == 200 for o in mine) and (
            not ok or ok[len(ok) // 2] <= RECOVERED_P50_RATIO * baseline_p50_s
        )

    good = [normal(k) for k in range(windows)]
    return next((k * window_s for k in range(windows) if all(good[k:])), None)


def plot(rows: list[dict], phases: Sequence[Phase], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t_s"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    top.plot(t, [r["sent"] for r in rows], label="sent/s", color="0.5")
    top.plot(t, [r["ok"] for r in rows], label="200/s", color="tab:green")
    top.plot(t, [r["shed"] for r in rows], label="503/s (shed)", color="tab:red")
    top.set_ylabel("requests per second")
    # markers: in overload, a second can have no success at all, and a line would hide its neighbours
    bottom.plot(t, [r["p50_ms"] for r in rows], ".-", label="p50 of 200s", color="tab:blue")
    bottom.plot(t, [r["p99_ms"] for r in rows], ".-", label="p99 of 200s", color="tab:purple")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("seconds (by send time)")
    start = 0.0
    for phase in phases:
        for ax in (top, bottom):
            ax.axvspan(start, start + phase.seconds, alpha=0.08 if phase.name == "overload" else 0.0, color="tab:red")
        top.text(start + 1, top.get_ylim()[1] * 0.92, f"{phase.name} {phase.rate:.1f}/s", fontsize=8)
        start += phase.seconds
    top.legend(loc="upper right", fontsize=8)
    bottom.legend(loc="upper right", fontsize=8)
    fig.suptitle("Overload: open-loop Poisson load, normal -> 3x capacity -> normal")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(url: str, args: argparse.Namespace) -> dict:
    """Measure (or take) capacity, run the three phases, and return the summary."""
    bodies = photo_bodies(args.photos)
    capacity = args.capacity or measure_capacity(
        url, bodies, clients=args.capacity_clients, seconds=args.capacity_seconds
    )
    normal = capacity * args.normal_share
    phases = [
        Phase("normal", args.normal_seconds, normal),
        Phase("overload", args.overload_seconds, capacity * args.overload_factor),
        Phase("recovery", args.recovery_seconds, normal),
    ]
    logger.info(
        "capacity %.1f req/s; phases: %s",
        capacity,
        ", ".join(f"{p.name} {p.rate:.1f}/s for {p.seconds:g} s" for p in phases),
    )
    outcomes = offer(url, phases, bodies, timeout=args.client_timeout, seed=args.seed)
    summaries = summarize(outcomes, phases)
    baseline_p50_s = summaries[0].p50_ms / 1000
    recovered = recovery_seconds(outcomes, baseline_p50_s, args.normal_seconds + args.overload_seconds)
    rows = timeline(outcomes)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "overload.csv").open("w") as f:
        f.write(",".join(rows[0]) + "\n")
        f.writelines(",".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in r.values()) + "\n" for r in rows)
    plot(rows, phases, args.out / "overload.png")
    summary = {
        "capacity_req_per_s": round(capacity, 2),
        "phases": [asdict(s) for s in summaries],
        "answered_all": all(s.other == 0 and s.no_answer == 0 for s in summaries),
        "recovery_s": recovered,
        "recovered_p50_ratio": RECOVERED_P50_RATIO,
    }
    (args.out / "overload.json").write_text(json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n")
    return summary


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}"


def report(summary: dict) -> str:
    lines = [
        f"capacity {summary['capacity_req_per_s']} req/s",
        "phase     offered/s  sent    200   503  other  no-answer  200/s  p50 ms  p99 ms  max ms  503 p99 ms",
    ]
    for s in summary["phases"]:
        lines.append(
            f"{s['phase']:<9} {s['offered_per_s']:>9.1f} {s['sent']:>5} {s['ok']:>6} {s['shed']:>5} "
            f"{s['other']:>6} {s['no_answer']:>10} {s['ok_per_s']:>6.1f} {_fmt(s['p50_ms']):>7} "
            f"{_fmt(s['p99_ms']):>7} {_fmt(s['max_ms']):>7} {_fmt(s['shed_p99_ms']):>11}"
        )
    recovered = summary["recovery_s"]
    lines.append(
        "every request answered (200 or 503 with Retry-After): " + ("yes" if summary["answered_all"] else "NO")
    )
    lines.append(
        f"back to normal latency (p50 <= {summary['recovered_p50_ratio']}x before, no 503): "
        + (f"{recovered:.0f} s after the overload ended" if recovered is not None else "NO")
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.overload",
        description=__doc__.split("\n\n")[0],
        formatter_class=DefaultsHelp,
    )
    p.add_argument("--url", help="a running server (localhost only) (default: start one on --model-tag)")
    p.add_argument("--capacity-clients", type=int, default=16, help="closed-loop clients when measuring capacity")
    p.add_argument("--normal-share", type=float, default=0.5, help="normal load as a share of capacity")
    p.add_argument("--overload-factor", type=float, default=3.0, help="overload as a multiple of capacity")
    p.add_argument("--normal-seconds", type=float, default=30.0, help="length of the normal phase")
    p.add_argument("--overload-seconds", type=float, default=60.0, help="length of the overload phase")
    p.add_argument("--recovery-seconds", type=float, default=45.0, help="length of the phase after the overload")
    add_run_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    if args.url:
        summary = run(args.url, args)
    else:
        with serve({"CLASSIFIER_MODEL_TAG": args.model_tag}) as url:
            summary = run(url, args)
    print(report(summary))
    return 0 if summary["answered_all"] and summary["recovery_s"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
