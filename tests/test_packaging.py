"""What a fresh install needs is declared, and the README's two commands do what it says."""

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def declared(*extras: str) -> set[str]:
    requirements = PROJECT["dependencies"] + [r for extra in extras for r in PROJECT["optional-dependencies"][extra]]
    return {requirement_name(r) for r in requirements}


def third_party_distributions(folder: Path, local: set[str]) -> dict[str, str]:
    """distribution -> one file that imports it, for every import in `folder` outside the standard library."""
    providers = importlib.metadata.packages_distributions()
    found = {}
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in local:
                    continue
                for distribution in providers.get(top, [top]):
                    found[distribution.lower().replace("_", "-")] = str(path.relative_to(ROOT))
    return found


def test_every_package_lrlab_imports_is_declared():
    imported = third_party_distributions(ROOT / "src" / "lrlab", {"lrlab"})
    undeclared = {d: where for d, where in imported.items() if d not in declared(*PROJECT["optional-dependencies"])}
    assert not undeclared, f"imported but not in pyproject.toml: {undeclared}"


def test_the_bench_extra_installs_what_the_benchmarks_import():
    local = {p.stem for p in (ROOT / "benchmarks").glob("*.py")} | {"lrlab"}
    imported = third_party_distributions(ROOT / "benchmarks", local)
    missing = {d: where for d, where in imported.items() if d not in declared("bench")}
    assert not missing, f"the benchmarks import these, but pip install -e '.[bench]' does not install them: {missing}"


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```")[1]
    return [line.split("#")[0].strip() for line in block.strip().splitlines()]


def planned(target: str) -> str:
    """The commands `make <target>` runs on a fresh clone (nothing installed yet), without running them."""
    return subprocess.run(["make", "--dry-run", "--always-make", "--no-print-directory", "-C", str(ROOT), target],
                          capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_the_readme_commands_set_up_their_own_environment_and_ci_runs_them():
    assert quick_start_commands() == ["make demo", "make test"]
    demo, test = planned("demo"), planned("test")
    for plan in (demo, test):
        assert plan.startswith("python3 -m venv .venv\n")  # never the system's or a user's Python
        assert all(line.startswith((".venv/bin/", "PATH=", "python3 -m venv")) for line in plan.splitlines()), plan
    assert "-e ." in demo and "[dev]" not in demo and "lrlab train --dataset fashion-mnist" in demo
    assert "-e '.[dev]'" in test and "pytest -q" in test
    ci = (ROOT / ".ci" / "run").read_text()
    assert all(command in ci.splitlines() for command in quick_start_commands())
