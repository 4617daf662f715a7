"""The examples and the README's Python blocks run as written (CI runs them through this file)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_python(arguments, cwd):
    return subprocess.run([sys.executable, *arguments], capture_output=True, text=True, timeout=600, cwd=cwd, check=False)


def test_own_model_example_compares_two_schedules_over_two_seeds(tmp_path):
    result = run_python([str(ROOT / "examples" / "own_model.py"), "--out", str(tmp_path / "runs"), "--epochs", "3"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].strip().startswith("constant: final test accuracy") and "vs baseline baseline" in lines[0]
    assert lines[1].strip().startswith("StepLR(2, 0.5): final test accuracy")
    assert (tmp_path / "runs" / "report.html").exists()
    assert sorted(p.name for p in (tmp_path / "runs" / "constant").iterdir()) == ["seed-0", "seed-1"]


def test_own_loop_example_prints_the_lr_its_schedule_sets(tmp_path):
    result = run_python([str(ROOT / "examples" / "own_loop.py")], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lrs = [float(line.rsplit(" ", 1)[1]) for line in result.stdout.splitlines()]
    assert len(lrs) == 6 and lrs[0] == 0.1 and all(later <= earlier for earlier, later in zip(lrs, lrs[1:]))


def readme_python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Bring your own model and data", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readme_python_example_and_own_loop_run_as_written(tmp_path):
    blocks = readme_python_blocks()
    assert len(blocks) == 2 and "lrlab.compare(" in blocks[0] and "lrlab.Schedule(" in blocks[1]
    script = tmp_path / "readme_example.py"
    script.write_text("\n".join(blocks) + "\nprint('schedules', [row['schedule'] for row in result.summary], run.state)\n")
    result = run_python([str(script)], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "schedules ['constant', 'StepLR(2, 0.5)', 'CosineAnnealingLR(6)'] finished" in result.stdout
    assert (tmp_path / "runs" / "mine" / "report.html").exists() and (tmp_path / "runs" / "one" / "best.pt").exists()
