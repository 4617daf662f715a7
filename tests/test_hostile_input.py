"""Hostile and careless input, round three (issue 24): user code, user data, comparison labels.

The refused commands run in one subprocess (tests/hostile_cli.py: an address-space limit and an
alarm per command), each with its --out deep inside a sandbox of its own, so that a run written
outside --out lands in the sandbox and is seen. Each ends in one bounded line and exit status 2,
writes nothing anywhere, and leaves an earlier comparison byte-identical; a case marked `then`
is the corrected command, which must then work in the same --out.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_hostile import fingerprint

import lrlab
from lrlab.cli import main
from lrlab.errors import MESSAGE_LIMIT, UsageError

HERE = Path(__file__).parent
RUN = ["--dataset", "digits", "--model", "mlp", "--width", "4", "--epochs", "1", "--batch-size", "64", "--quiet"]
API = {"data": "digits", "model": "mlp", "width": 4, "epochs": 1, "batch_size": 64, "quiet": True, "device": "cpu"}
SHELL_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._=+@-]*")


@pytest.fixture(scope="module")
def earlier(tmp_path_factory) -> Path:
    """A finished comparison (one arm, one seed) that refused commands are pointed at."""
    out = tmp_path_factory.mktemp("earlier") / "comparison"
    assert main(["compare", "--schedules", "step:step_size=5,gamma=0.5", "--seeds", "0", *RUN, "--out", str(out)]) == 0
    return out


def build_cases(earlier: Path, scratch: Path) -> list[dict]:
    cases = []
    code = HERE / "own_code" / "careless.py"

    def add(case_id: str, argv: list[str], says: str | None, *, yaml: str | None = None, guarded: Path | None = None,
            then: bool = False, note: str | None = None, failed_run: bool = False) -> None:
        """`says` None: the command is legal and must end with status 0 (and say `note`). `yaml`: a --config
        file's text. `failed_run`: the run started and must be left marked failed."""
        sandbox = scratch / "sandboxes" / str(len(cases))
        out = sandbox / "a" / "b" / "c" / "out"
        if then:  # the corrected command of the case before: the same sandbox and --out
            sandbox, out = Path(cases[-1]["sandbox"]), Path(cases[-1]["out"])
            cases[-1]["corrected_after"] = True  # its sandbox is the corrected command's: not checked empty
        if yaml is not None:
            config = scratch / "configs" / f"{len(cases)}.yaml"
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(yaml.replace("SANDBOX", str(sandbox)))
            argv = [*argv, "--config", str(config)]
        target = guarded or out
        cases.append({"id": case_id, "argv": [*argv, "--out", str(target)], "says": says, "sandbox": str(sandbox),
                      "out": str(target), "guarded": str(guarded) if guarded else None, "note": note, "failed_run": failed_run,
                      "fingerprint": fingerprint(guarded) if guarded else None, "seconds": 30})

    compare = ["compare", "--seeds", "0", *RUN]
    # A. Labels are checked before anything is written.
    for name, label, says in [("leading out", "../../../escaped", "holds a path"), ("absolute", "SANDBOX/absolute", "holds a path"),
                              ("a dot", ".", "holds a path"), ("with a slash at the end", "a/", "holds a path"),
                              ("a NUL", "\\0evil", "control character"), ("a newline", "two\\nlines", "control character"),
                              ("300 characters", "x" * 300, "300 characters long"), ("blank", "'  '", "label is empty")]:
        add(f"label {name}", compare, says, yaml=f'schedules: [{{label: "{label}", schedule: constant}}]\n'
            if "\\" in label else f"schedules: [{{label: {label}, schedule: constant}}]\n")
    add("two labels one folder", compare, "same label",
        yaml="schedules: [{label: a, schedule: constant}, {label: a, schedule: 'step:step_size=1'}]\n")
    add("a label leading out, into an earlier comparison", compare, "holds a path", guarded=_copy(earlier, scratch / "guarded" / "label"),
        yaml="schedules: [{label: ../../escaped, schedule: constant}]\n")
    # C. A comparison refused for a typo leaves nothing that refuses the corrected command.
    for name, wrong in [("data set", ["--dataset", "digitz"]), ("model", ["--model", "cnnn"]),
                        ("model argument", ["--model-args", "widht=16"])]:
        add(f"compare with a misspelt {name}", [*compare, "--schedules", "constant", *wrong], "unknown")
    add("compare with a misspelt model argument, corrected", [*compare, "--schedules", "constant"], None, then=True)
    add("a misspelt model into an earlier comparison", [*compare, "--model", "cnnn", "--schedules", "constant"],
        "different model", guarded=_copy(earlier, scratch / "guarded" / "model"))
    # E. Ill-typed options in a comparison's YAML.
    for name, yaml, says in [("seeds a number", "seeds: 3\nschedules: [constant]\n", "seeds should be a list"),
                             ("lrs a number", "lrs: 0.1\nschedules: [constant]\n", "lrs should be a list"),
                             ("lrs with a word", "lrs: [0.1, a]\nschedules: [constant]\n", "should be a number"),
                             ("min_effect a list", "min_effect: [1]\nschedules: [constant]\n", "should be a number"),
                             ("target_acc a word", "target_acc: high\nschedules: [constant]\n", "should be a number"),
                             ("schedule a number", "schedules: [{schedule: 5}]\n", "is a spec written as text"),
                             ("schedules empty", "schedules: []\n", "schedules is empty")]:
        add(f"yaml {name}", ["compare", *RUN], says, yaml=yaml)
    # F. A model that cannot take a training step is refused before any run.
    train = ["train", *RUN[:2], "--epochs", "1", "--batch-size", "64", "--quiet"]
    for name, says in [("TupleInTraining", "returned a tuple in training mode"), ("IntegerLogits", "floating-point logits"),
                       ("frozen", "no parameter to train")]:
        add(f"train a model {name}", [*train, "--model", f"{code}:{name}"], says)
    own_model = ["compare", "--seeds", "0", *RUN[:2], *RUN[6:]]  # no --width: the user's model does not take one
    add("compare a frozen model", [*own_model, "--schedules", "constant", "--model", f"{code}:frozen"], "no parameter to train")
    # D. compare sizes the model before it builds it, as train does.
    add("compare a million wide", [*compare, "--schedules", "constant", "--model", "cnn", "--width", "1000000"],
        "GiB of cpu memory")
    # H. The user's data: labels and pixels checked once, when read, naming the item.
    on_data = lambda name: ["train", "--dataset", f"{code}:{name}", *train[3:], "--model", "mlp", "--width", "4"]
    for name, says in [("huge_label", "item 5 of the training set has label 1,000,000,000"),
                       ("negative_length", "len() of the training set failed"),
                       ("nan_in_training", "item 3 of the training set: the image holds NaN"),
                       ("infinity_in_test", "item 2 of the test set: the image holds NaN or infinite")]:
        add(f"data set {name}", on_data(name), says)
    add("data set labels_from_one", on_data("labels_from_one"), None, note="none labelled 0: the model gets 11 outputs")
    # I. A model function that returns one cached instance would start a run from another's weights.
    add("compare a cached model", [*own_model, "--schedules", "constant", "step:step_size=1", "--model", f"{code}:cached"],
        "returned a model object it had returned before")
    # J. User code that calls sys.exit.
    add("a model function that exits", [*train, "--model", f"{code}:exits"], "could not be built: SystemExit: 3")
    add("a data set function that exits", on_data("exits_data"), "calling it failed: SystemExit")
    add("a model file that parses the command line", [*train, "--model", f"{HERE / 'own_code' / 'parses_argv.py'}:model"],
        "it called sys.exit when imported")
    add("a model that exits in training", [*train, "--model", f"{code}:ExitsInTraining"], "called sys.exit(3) in epoch 1",
        failed_run=True)
    # G. A callable that takes **kwargs accepts any keyword (torchvision's builders do).
    add("a model function of **kwargs", [*train, "--model", f"{code}:keywords_only", "--model-args", "classes=10"], None)
    # K. Messages that name the cause.
    add("a validation fraction that leaves no batch", [*train, "--model", "mlp", "--val-fraction", "0.999"],
        "lower --val-fraction 0.999")
    add("ray at an address nobody answers", [*compare, "--schedules", "constant", "--backend", "ray", "--ray-address", "127.0.0.1:1"],
        "cannot join the Ray cluster at 127.0.0.1:1")
    return cases


def _copy(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


@pytest.fixture(scope="module")
def outcomes(earlier, tmp_path_factory):
    scratch = tmp_path_factory.mktemp("hostile-input")
    cases = build_cases(earlier, scratch)
    (scratch / "cases.json").write_text(json.dumps(cases))
    finished = subprocess.run([sys.executable, str(HERE / "hostile_cli.py"), str(scratch / "cases.json")],
                              capture_output=True, text=True, timeout=600, cwd=scratch)
    results = {}
    for line in finished.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            results[record["id"]] = record
    return {case["id"]: (case, results.get(case["id"])) for case in cases}


def _files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


CASE_IDS = [
    *[f"label {name}" for name in ("leading out", "absolute", "a dot", "with a slash at the end", "a NUL", "a newline",
                                   "300 characters", "blank")],
    "two labels one folder", "a label leading out, into an earlier comparison",
    *[f"compare with a misspelt {name}" for name in ("data set", "model", "model argument")],
    "compare with a misspelt model argument, corrected",
    "a misspelt model into an earlier comparison",
    *[f"yaml {name}" for name in ("seeds a number", "lrs a number", "lrs with a word", "min_effect a list", "target_acc a word",
                                  "schedule a number", "schedules empty")],
    *[f"train a model {name}" for name in ("TupleInTraining", "IntegerLogits", "frozen")], "compare a frozen model",
    "compare a million wide",
    *[f"data set {name}" for name in ("huge_label", "negative_length", "nan_in_training", "infinity_in_test", "labels_from_one")],
    "compare a cached model", "a model function that exits", "a data set function that exits",
    "a model file that parses the command line", "a model that exits in training",
    "a model function of **kwargs", "a validation fraction that leaves no batch", "ray at an address nobody answers",
]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_each_careless_command_ends_in_one_line_with_status_2_and_writes_nothing_outside_its_out(outcomes, case_id):
    case, result = outcomes[case_id]
    assert result is not None, "the command never reported (the process died)"
    sandbox, out = Path(case["sandbox"]), Path(case["out"])
    if case["says"] is None:  # legal input: it runs, and writes only inside --out
        assert result["status"] == 0, result["stderr"][-2000:]
        assert case["note"] is None or case["note"] in result["stderr"], result["stderr"][-2000:]
        assert all(name.startswith(str(out.relative_to(sandbox))) for name in _files_under(sandbox)), _files_under(sandbox)
        return
    lines = result["stderr"].strip().splitlines()
    assert result["status"] == 2, result["stderr"][-2000:]
    assert len(lines) == 1 and len(lines[0]) <= MESSAGE_LIMIT, result["stderr"][:2000]
    assert case["says"] in lines[0], lines[0]
    if case["failed_run"]:  # it started: the run is marked failed, and nothing is written outside --out
        assert json.loads((out / "status.json").read_text())["state"] == "failed"
        assert all(name.startswith(str(out.relative_to(sandbox))) for name in _files_under(sandbox))
    elif not case.get("corrected_after"):
        assert _files_under(sandbox) == [], "a refused command wrote files"
    if case["guarded"]:
        assert fingerprint(Path(case["guarded"])) == case["fingerprint"]


def test_every_careless_command_is_checked(outcomes):
    assert sorted(outcomes) == sorted(CASE_IDS)


# -- A: labels and the folders of their runs -------------------------------------------------------------


def test_labels_that_name_the_comparisons_own_files_get_folders_of_their_own_and_keep_their_label(tmp_path):
    out = tmp_path / "comparison"
    schedules = [{"label": "summary.csv", "schedule": "constant"}, {"label": "StepLR(5, 0.5)", "schedule": "step:step_size=5"},
                 {"label": "A", "schedule": "step:step_size=3"}, {"label": "a", "schedule": "step:step_size=4"}]
    result = lrlab.compare(**API, schedules=schedules, seeds=[0], out=out)
    assert [row["schedule"] for row in result.summary] == ["summary.csv", "StepLR(5, 0.5)", "A", "a"]
    manifest = json.loads((out / "comparison.json").read_text())
    folders = [variant["folder"] for variant in manifest["variants"]]
    assert [variant["label"] for variant in manifest["variants"]] == [s["label"] for s in schedules]
    assert all(SHELL_SAFE.fullmatch(folder) for folder in folders), folders
    assert len({folder.casefold() for folder in folders}) == 4  # apart on a case-insensitive file system too
    assert (out / "summary.csv").is_file() and all((out / folder / "seed-0" / "status.json").is_file() for folder in folders)
    assert "StepLR(5, 0.5)" in (out / "summary.md").read_text()
    assert "nan" not in result.verdict.lower()  # K: one seed gives no interval, never "+nan to +nan"


def test_a_comparison_written_with_labels_as_folders_still_resumes_and_reports(earlier, tmp_path):
    out = _copy(earlier, tmp_path / "comparison")
    # As an older lrlab left it: each arm's runs under its label, no folder in comparison.json.
    manifest = json.loads((out / "comparison.json").read_text())
    for variant in manifest["variants"]:
        (out / variant.pop("folder")).rename(out / variant["label"])
    (out / "comparison.json").write_text(json.dumps(manifest))
    before = fingerprint(out / "StepLR(5, 0.5)")
    result = lrlab.compare(**API, schedules=["step:step_size=5,gamma=0.5", "cosine:T_max=3"], seeds=[0], out=out)
    assert [o.state for o in result.outcomes] == ["finished"] * 2
    assert fingerprint(out / "StepLR(5, 0.5)") == before  # found where it was, not trained again
    folders = {v["label"]: v.get("folder") for v in json.loads((out / "comparison.json").read_text())["variants"]}
    assert folders["StepLR(5, 0.5)"] is None and SHELL_SAFE.fullmatch(folders["CosineAnnealingLR(3)"])
    assert [row["schedule"] for row in result.summary] == ["StepLR(5, 0.5)", "CosineAnnealingLR(3)"]


def test_a_label_is_checked_before_the_folder_is_made():
    with pytest.raises(UsageError, match="holds a path"):
        lrlab.compare(**API, schedules=[{"label": "../x", "schedule": "constant"}], seeds=[0], out="/nonexistent/never/made")


# -- B: LRs that print alike -------------------------------------------------------------------------------


def test_lrs_that_print_alike_get_folders_of_their_own_and_both_finish(tmp_path):
    out = tmp_path / "comparison"
    # A pathlib.Path for out and numpy seeds, as a Python user passes them.
    result = lrlab.compare(**API, schedules=["constant"], lrs=[0.1, 0.1000001], seeds=np.arange(1), out=out)
    assert [o.state for o in result.outcomes] == ["finished", "finished"]
    assert type(result.outcomes[0].seed) is int
    runs = sorted(p.parent.relative_to(out) for p in out.rglob("status.json"))
    assert len(runs) == 2 and runs[0] != runs[1]


def test_a_refused_run_never_marks_a_finished_run_failed(tmp_path):
    from lrlab.config import RunConfig
    from lrlab.executors import train_pass

    config = RunConfig(dataset="digits", model="mlp", width=4, epochs=1, out=str(tmp_path / "run"), quiet=True)
    lrlab.train(config)
    before = fingerprint(tmp_path / "run")
    [(state, reason)] = train_pass([RunConfig(**{**config.to_dict(), "optimizer": "sgd:lr=0.2"})])
    assert state == "failed" and "different optimizer" in reason
    assert fingerprint(tmp_path / "run") == before


# -- E: ill-typed options from Python ----------------------------------------------------------------------


@pytest.mark.parametrize("options, says", [
    ({"seeds": 3}, "seeds should be a list"), ({"seeds": [0, "1"]}, "whole numbers"),
    ({"target_acc": "0.5"}, "should be a number"), ({"min_effect": "1"}, "should be a number"),
    ({"lrs": "0.1"}, "lrs should be a list"), ({"lrs": [0.1, "a"]}, "should be a number"),
    ({"lrs": [0.1, float("nan")]}, "should be a number"), ({"schedules": []}, "schedules is empty"),
    ({"schedules": [{"schedule": 5}]}, "is a spec written as text"),
    ({"schedules": [{"schedule": "constant", "label": ["a"]}]}, "label should be text"),
])
def test_ill_typed_comparison_options_are_one_usage_error(tmp_path, options, says):
    with pytest.raises(UsageError, match=says):
        lrlab.compare(**API, **{"schedules": ["constant"], **options}, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_schedule_driver_refuses_what_is_not_a_spec_and_metrics_that_are_not_a_mapping():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(UsageError, match="spec is text"):
        lrlab.Schedule(5, optimizer, 3, 1)
    with pytest.raises(UsageError, match="pass it to after_epoch"):
        lrlab.Schedule("plateau", optimizer, 3, 1).after_epoch(None)


# -- F: a model vmap cannot run trains alone ----------------------------------------------------------------


class ItemInForward(torch.nn.Module):
    """Reads a number out of a tensor in its forward (`.item()`), which torch.func.vmap cannot batch."""

    def __init__(self, **shape):
        super().__init__()
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))

    def forward(self, images):
        logits = self.head(images)
        return logits * 0 if logits.sum().item() > 1e9 else logits


def test_a_model_vmap_cannot_run_trains_alone_with_a_note(tmp_path):
    from lrlab.config import RunConfig
    from lrlab.assembly import load_run_data
    from lrlab.executors import GridTask
    from lrlab.grid import plan_passes

    base = RunConfig(dataset="digits", model="own", epochs=1, out=str(tmp_path), quiet=True, device="cpu")
    tasks = [GridTask(label, 0, RunConfig(**{**base.to_dict(), "schedule": spec, "out": str(tmp_path / label)}))
             for label, spec in (("a", "constant"), ("b", "step:step_size=1"))]
    data = load_run_data(base)
    passes, lines = plan_passes(tasks, 2, base, data, builder=ItemInForward)
    assert [len(members) for members in passes] == [1, 1]
    assert any("cannot train in groups under torch.func.vmap" in line for line in lines), lines
    passes, _ = plan_passes(tasks, 2, base, data, builder=lambda **shape: ItemInForward().head)
    assert [len(members) for members in passes] == [2]  # a model vmap can run still shares the pass


# -- I: one seed, one start ---------------------------------------------------------------------------------


def numpy_initialised(**shape):
    """A model whose initial weights come from numpy's global generator, as some users write them."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight.copy_(torch.from_numpy(np.random.randn(10, 64) * 0.1))
    return model


def test_a_model_initialised_from_numpy_starts_alike_for_one_seed(tmp_path):
    from helpers import without_timing

    from lrlab.runs import RunDirectory

    for name in ("first", "second"):
        np.random.rand(7)  # whatever drew from numpy before must not matter
        lrlab.train(model=numpy_initialised, data="digits", epochs=1, seed=3, out=str(tmp_path / name), quiet=True, device="cpu")
    first, second = (without_timing(RunDirectory(tmp_path / name).read_metrics()) for name in ("first", "second"))
    assert first == second


def test_the_check_before_a_run_leaves_its_weights_statistics_and_generator_as_built():
    from lrlab.models import check_model

    def net():
        return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.5),
                                   torch.nn.Flatten(), torch.nn.Linear(144, 10))

    torch.manual_seed(0)
    built = net()
    state = {k: v.clone() for k, v in built.state_dict().items()}
    after_build = torch.random.get_rng_state()
    checked = check_model("net", lambda: built, 1, (8, 8), 10)
    assert all(torch.equal(state[k], v) for k, v in checked.state_dict().items())
    assert all(p.grad is None for p in checked.parameters()) and checked.training
    assert torch.equal(torch.random.get_rng_state(), after_build)


def test_resuming_after_the_model_file_was_edited_says_so(tmp_path, capsys):
    from lrlab.config import RunConfig

    nets = tmp_path / "mynets.py"
    nets.write_text((HERE / "own_code" / "nets.py").read_text())
    config = RunConfig(dataset="digits", model=f"{nets}:Net", epochs=1, out=str(tmp_path / "run"), quiet=True, device="cpu")
    lrlab.train(config)
    assert "model_source_sha256" in (tmp_path / "run" / "config.yaml").read_text()
    for edit in ("", "\n# the user changed something\n"):
        nets.write_text(nets.read_text() + edit)
        capsys.readouterr()
        assert main(["train", "--out", config.out, "--resume", "--quiet"]) == 0
        said = capsys.readouterr().err
        assert ("mynets.py has changed since this run started" in said) == bool(edit), said
