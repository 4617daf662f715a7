"""What a short training run spends outside its epoch: wall time minus the `elapsed_seconds` it records,
and the CPU seconds it has used when its first epoch starts (a figure a busy machine disturbs far less).

Each measurement is a fresh `lrlab train --dataset fashion-mnist --limit-train 512 --epochs 1 --quiet`
process; the versions given with --src are interleaved round by round, so a change in the machine's
load touches them alike. Median and range over the rounds, with the load average seen.

    git archive eae4ee6 src | tar -x -C /tmp/lrlab-before
    python benchmarks/train_startup.py --rounds 9 --src before=/tmp/lrlab-before/src --src after=src
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMAND = ["train", "--dataset", "fashion-mnist", "--limit-train", "512", "--epochs", "1", "--quiet"]
# Run in the child: stop the process when its first epoch starts and print the CPU seconds used so far.
TO_FIRST_EPOCH = """
import os, sys, time
from lrlab import engine
def stop(*arguments, **keywords):
    print(time.process_time(), flush=True)
    os._exit(0)
for name in ("train_epoch", "train_one_epoch"):  # the loop's name now, and before issue 23
    if hasattr(engine, name):
        setattr(engine, name, stop)
from lrlab.cli import main
main(sys.argv[1:])
"""


def outside_the_epoch(source: str, out: Path) -> float:
    """Wall seconds of a whole run minus the elapsed_seconds its metrics.csv records."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lrlab", *COMMAND, "--out", str(out), "--overwrite"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tempfile.gettempdir(),
                   env={**os.environ, "PYTHONPATH": source})
    wall = time.perf_counter() - started
    last_row = (out / "metrics.csv").read_text().strip().splitlines()[-1]
    return wall - float(last_row.split(",")[-1])


def cpu_to_first_epoch(source: str, out: Path) -> float:
    """CPU seconds (user + system) the process has used when its first epoch starts."""
    result = subprocess.run([sys.executable, "-c", TO_FIRST_EPOCH, *COMMAND, "--out", str(out), "--overwrite"], check=True,
                            capture_output=True, text=True, cwd=tempfile.gettempdir(), env={**os.environ, "PYTHONPATH": source})
    return float(result.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default: 5)")
    parser.add_argument("--src", action="append", metavar="LABEL=PATH",
                        help="an lrlab source folder to measure (repeatable); default: this checkout's src")
    arguments = parser.parse_args()
    sources = dict(item.split("=", 1) for item in arguments.src or [f"this checkout={ROOT / 'src'}"])
    sources = {label: str(Path(path).resolve()) for label, path in sources.items()}
    scratch = Path(tempfile.mkdtemp(prefix="lrlab-train-startup-"))
    figures: dict[tuple[str, str], list[float]] = {}
    loads: list[float] = []
    for _ in range(arguments.rounds):
        for label, source in sources.items():
            for name, measure in (("wall minus elapsed_seconds", outside_the_epoch), ("CPU seconds to the first epoch", cpu_to_first_epoch)):
                figures.setdefault((label, name), []).append(measure(source, scratch / label))
                loads.append(os.getloadavg()[0])
    print(f"load average during the rounds: {min(loads):.1f}-{max(loads):.1f}")
    print(f"| version | figure | seconds (median of {arguments.rounds}) | range |")
    print("|---|---|---|---|")
    for (label, name), values in figures.items():
        print(f"| {label} | {name} | {statistics.median(values):.2f} | {min(values):.2f}-{max(values):.2f} |")


if __name__ == "__main__":
    main()
