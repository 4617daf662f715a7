"""Wall time from typing the command to reaching a test accuracy, for the speed-run configs.

Each seed runs `lrlab train --config <config>` as a fresh process; the clock starts before the
process does (Python start-up, imports and data loading all count) and stops when the epoch that
first reaches the target is in metrics.csv. Median and range over the seeds.

    python benchmarks/speedrun.py                                   # both configs, seeds 0 1 2
    python benchmarks/speedrun.py --config configs/speedrun-92.yaml --target 0.92 --seeds 0
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = [(ROOT / "configs" / "speedrun-92.yaml", 0.92, 60.0), (ROOT / "configs" / "speedrun-93.yaml", 0.93, 300.0)]


def read_rows(metrics: Path) -> list[dict[str, str]]:
    if not metrics.exists():
        return []
    with open(metrics, newline="") as handle:
        return list(csv.DictReader(handle))


def time_to_target(config: Path, target: float, seed: int) -> tuple[float | None, float, float]:
    """(seconds until test accuracy >= target or None, seconds in all, final accuracy)."""
    out = Path(tempfile.mkdtemp(prefix="lrlab-speedrun-")) / "run"
    metrics = out / "metrics.csv"
    started = time.perf_counter()
    process = subprocess.Popen(["lrlab", "train", "--config", str(config), "--seed", str(seed), "--out", str(out), "--quiet"],
                               stdout=subprocess.DEVNULL)
    reached, rows_seen = None, 0
    while True:
        finished = process.poll() is not None
        rows = read_rows(metrics)
        if reached is None and any(float(row["test_acc"]) >= target for row in rows[rows_seen:]):
            reached = time.perf_counter() - started
        rows_seen = len(rows)
        if finished:
            break
        time.sleep(0.05)
    if process.returncode != 0:
        raise SystemExit(f"lrlab train failed for {config} seed {seed}")
    return reached, time.perf_counter() - started, float(rows[-1]["test_acc"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--target", type=float)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    arguments = parser.parse_args()
    runs = [(arguments.config, arguments.target, None)] if arguments.config else RUNS
    print("| config | target | seed | seconds to target | seconds in all | final test accuracy |")
    print("|---|---|---|---|---|---|")
    summaries = []
    for config, target, budget in runs:
        reached = []
        for seed in arguments.seeds:
            seconds, total, final = time_to_target(config, target, seed)
            reached.append(seconds)
            shown = f"{seconds:.1f}" if seconds is not None else "not reached"
            print(f"| {config.name} | {target:.0%} | {seed} | {shown} | {total:.1f} | {final:.4f} |", flush=True)
        times = [s for s in reached if s is not None]
        if times:
            verdict = "" if budget is None else (" (within" if max(times) <= budget else " (over") + f" the {budget:.0f} s target)"
            summaries.append(f"{config.name}: {len(times)}/{len(reached)} seeds reached {target:.0%}; median {statistics.median(times):.1f} s, "
                             f"range {min(times):.1f}-{max(times):.1f} s{verdict}")
        else:
            summaries.append(f"{config.name}: no seed reached {target:.0%}")
    print()
    for line in summaries:
        print(line)


if __name__ == "__main__":
    main()
