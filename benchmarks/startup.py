"""Start-up: wall seconds from typing a command to its answer, against Python and `import torch` alone.

Each command runs as a fresh process, in rounds (every command once per round, in order), so a
change in the machine's load touches them all alike; median and range over the rounds.

    python benchmarks/startup.py --repeats 5
    python benchmarks/startup.py --src before=/tmp/old/src --src after=src    # two versions of lrlab, same rounds

`train` is `lrlab train --config configs/speedrun-92.yaml` cut to one epoch of 256 images (and 256
test images): Python, imports, reading Fashion-MNIST, building the run, one short epoch, checkpoints.
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


def commands(out: Path) -> dict[str, list[str]]:
    lrlab = [sys.executable, "-m", "lrlab"]
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
        "lrlab --help": [*lrlab, "--help"],
        "lrlab schedules": [*lrlab, "schedules"],
        "lrlab train (speedrun-92, 256 images, 1 epoch)": [
            *lrlab, "train", "--config", str(ROOT / "configs" / "speedrun-92.yaml"), "--epochs", "1", "--limit-train", "256",
            "--limit-test", "256", "--quiet", "--overwrite", "--out", str(out)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="rounds (default: 5)")
    parser.add_argument("--src", action="append", metavar="LABEL=PATH",
                        help="an lrlab source folder to measure (repeatable); default: this checkout's src")
    arguments = parser.parse_args()
    sources = dict(item.split("=", 1) for item in arguments.src or [f"this checkout={ROOT / 'src'}"])
    runs = {}
    for label, source in sources.items():
        for name, command in commands(Path(tempfile.mkdtemp(prefix="lrlab-startup-")) / "run").items():
            if not name.startswith("lrlab") and runs.get(name):
                continue  # Python and torch alone do not depend on lrlab's source
            runs[name if not name.startswith("lrlab") else f"{name} [{label}]"] = (command, str(Path(source).resolve()))
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(arguments.repeats):
        for name, (command, source) in runs.items():
            started = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": source})
            seconds[name].append(time.perf_counter() - started)
    torch_alone = statistics.median(seconds['python -c "import torch"'])
    print(f"| command | seconds (median of {arguments.repeats}) | range | vs import torch |")
    print("|---|---|---|---|")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"| `{name}` | {median:.2f} | {min(values):.2f}-{max(values):.2f} | {median / torch_alone:.2f}x |")


if __name__ == "__main__":
    main()
