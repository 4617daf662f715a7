"""Data flows one way (DESIGN.md): no lrlab module imports one downstream of it, and test hooks live in the tests.

Read from the source (every import statement, those inside functions too), and checked once more
in a fresh interpreter for the two promises DESIGN names: the config loads no data source, and a
report is rebuilt without the engine or the grid runner.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SOURCE = Path(__file__).parent.parent / "src"

# DESIGN's flow, config -> data + model + optimizer + schedule -> engine -> run directory -> stats -> report,
# as stages of modules. The spec parsers come before config because config checks every spec with them;
# they import nothing of lrlab but the vocabulary. The comparison's folder layout (comparison.py) sits with
# the run directory: the grid runner writes it, the aggregation reads it, and neither imports the other.
STAGES = {
    "vocabulary": ("lrlab.errors", "lrlab.specs", "lrlab.__version__"),
    "spec parsers": ("lrlab.schedules", "lrlab.optimizers", "lrlab.preview", "lrlab.imports"),
    "config": ("lrlab.config",),
    "parts": ("lrlab.data", "lrlab.data.*", "lrlab.models", "lrlab.distributed", "lrlab.lrfinder", "lrlab.stacked",
              "lrlab.vectorized", "lrlab.step", "lrlab.assembly"),
    "run directory": ("lrlab.runs", "lrlab.comparison", "lrlab.tuning"),
    "engine": ("lrlab.engine", "lrlab.group"),
    "grid runner": ("lrlab.executors", "lrlab.grid"),
    "results": ("lrlab.stats", "lrlab.aggregate", "lrlab.report"),
    "study": ("lrlab.study",),  # tune through the grid runner, then read results to decide on more seeds
    "entry points": ("lrlab", "lrlab.__main__", "lrlab.cli", "lrlab.api"),
}
MAY_USE = {
    "vocabulary": set(),
    "spec parsers": {"vocabulary"},
    "config": {"vocabulary", "spec parsers"},
    "parts": {"vocabulary", "spec parsers", "config"},
    "run directory": {"vocabulary", "spec parsers", "config"},  # a study's ranged specs are checked as specs
    "engine": {"vocabulary", "spec parsers", "config", "parts", "run directory"},
    "grid runner": {"vocabulary", "spec parsers", "config", "parts", "run directory", "engine"},
    "results": {"vocabulary", "spec parsers", "config", "run directory"},  # the report runs lrlab doctor on each spec
    "study": {"vocabulary", "spec parsers", "config", "parts", "run directory", "engine", "grid runner", "results"},
    "entry points": set(STAGES),
}


def stage_of(module: str) -> str:
    for stage, patterns in STAGES.items():
        if any(module == p or (p.endswith(".*") and module.startswith(p[:-1])) for p in patterns):
            return stage
    raise AssertionError(f"{module} is in no stage of DESIGN's flow; add it to STAGES in {Path(__file__).name}")


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def lrlab_imports(path: Path) -> set[str]:
    """Every lrlab module `path` imports; `from lrlab import x` names the submodule x, or lrlab.x itself."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "lrlab"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "lrlab":
            if node.module == "lrlab":
                found |= {f"lrlab.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
    return found


MODULES = sorted(SOURCE.joinpath("lrlab").rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_no_module_imports_one_downstream_of_it(path):
    module = module_name(path)
    stage = stage_of(module)
    allowed = MAY_USE[stage] | {stage}
    for imported in lrlab_imports(path):
        assert stage_of(imported) in allowed, f"{module} ({stage}) imports {imported} ({stage_of(imported)}), downstream of it"


def test_the_check_sees_a_backward_import(tmp_path):
    package = tmp_path / "lrlab"
    package.mkdir()
    (package / "config.py").write_text("def validate():\n    from lrlab.data.loader import AUGMENTATIONS\n")
    assert stage_of(next(iter(lrlab_imports(package / "config.py")))) not in MAY_USE["config"]


def test_the_product_reads_no_test_hook():
    for path in MODULES:
        assert "LRLAB_TEST" not in path.read_text(), f"{path} reads a test hook; put it in the tests"


@pytest.mark.parametrize("module, never", [
    ("lrlab.config", ("lrlab.data", "lrlab.engine", "lrlab.models")),
    ("lrlab.report", ("lrlab.engine", "lrlab.executors", "lrlab.grid", "lrlab.data")),
])
def test_a_fresh_interpreter_loads_nothing_downstream(module, never):
    """What importing `module` really loads, lrlab/__init__.py included."""
    code = f"import sys, {module}; print(' '.join(m for m in sys.modules if m.startswith('lrlab')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert module in loaded and not [m for m in loaded if m.startswith(never)]


# Each takes a second or more to import, and a plain training run uses none of them: torchvision only
# folder data sets, resnet and torchvision: models; scipy.signal only the LR range test; torch._dynamo
# only torch.compile (torch.optim imports it the first time an optimizer is built, which lrlab cannot
# change, so it is checked at import time only).
SLOW_IMPORTS = ("torchvision", "scipy.signal", "torch._dynamo")


def test_importing_the_train_path_loads_no_slow_module():
    code = ("import sys, lrlab.cli, lrlab.api, lrlab.engine\n"
            f"print(' '.join(m for m in {SLOW_IMPORTS!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout.split()
    assert loaded == []


def test_a_training_run_loads_neither_torchvision_nor_scipy_signal(tmp_path):
    code = ("import sys, lrlab\n"
            "result = lrlab.train(lrlab.RunConfig(dataset='synthetic', model='cnn', width=4, epochs=1, batch_size=64,\n"
            f"    limit_train=128, limit_test=64, device='cpu', quiet=True, out={str(tmp_path / 'run')!r}))\n"
            "print(result.state, ' '.join(m for m in ('torchvision', 'scipy.signal') if m in sys.modules))")
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300).stdout.split()
    assert printed == ["finished"]
