"""Hostile and careless input (issue 16): every command below ends in one line and exit status 2,
fast, within a memory bound, and changes nothing of an earlier run.

The commands run in one subprocess (tests/hostile_cli.py) under a 5 GiB address-space limit and a
per-command alarm, so an input that hangs or eats memory fails its own test instead of the machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import slow_epochs, write_cifar10_archive

from lrlab import train
from lrlab.cli import main
from lrlab.config import RunConfig
from lrlab.errors import MESSAGE_LIMIT, UsageError, clip
from lrlab.runs import RunDirectory

HERE = Path(__file__).parent
# Each command is given this long; they take well under a second on an idle machine, and the alarm
# in hostile_cli.py stops a hang at 30 s so that it fails its own test.
SECONDS = 10
TINY = ["--dataset", "digits", "--model", "cnn", "--width", "4", "--batch-size", "64", "--quiet"]


def tiny(out: Path, **overrides) -> RunConfig:
    values = {"dataset": "digits", "model": "cnn", "width": 4, "epochs": 2, "batch_size": 64, "seed": 0,
              "optimizer": "sgd:lr=0.05,momentum=0.9", "out": str(out), "quiet": True}
    values.update(overrides)
    return RunConfig(**values)


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file under `folder` (run.lock aside) with a hash of its bytes."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "run.lock"}


def shared_list_cifar_batch() -> bytes:
    """A few hundred bytes that unpickle into labels of 10**9 shared references (the issue's 6.8 GB)."""
    nested = [[[0] * 1000] * 1000] * 1000
    return pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [nested]}, protocol=2)


@pytest.fixture(scope="module")
def earlier(tmp_path_factory) -> dict[str, Path]:
    """Finished runs and a comparison the hostile commands are pointed at (copied per case)."""
    root = tmp_path_factory.mktemp("earlier")
    runs = {"run": root / "run", "auto": root / "auto"}
    train(tiny(runs["run"]))
    train(tiny(runs["auto"], epochs=1, optimizer="sgd:lr=auto,momentum=0.9"))
    assert main(["compare", "--schedules", "constant", "step:step_size=1,gamma=0.5", "--seeds", "0", "--epochs", "1",
                 *TINY[:-1], "--out", str(root / "comparison")]) == 0
    runs["comparison"] = root / "comparison"
    return runs


def copy_of(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


# Damage that replaces one file's bytes.
REWRITES = {
    "steps.csv bad header": ("steps.csv", b"a,b\n1,2\n"),
    "steps.csv not UTF-8": ("steps.csv", b"\x80\x81\x82\n"),
    "status.json not an object": ("status.json", b"[1, 2, 3]\n"),
    "status.json not JSON": ("status.json", b"\xff{"),
    "config.yaml not UTF-8": ("config.yaml", b"epochs: 2\nschedule: \xff\xfe\n"),
    "lr_find.json damaged": ("lr_find.json", b'{"pick": "fast"}'),
    "lr_find.json not JSON": ("lr_find.json", b"\x00\x01"),
    "correct.npz not a zip": ("correct.npz", b"PK\x03\x04 not a zip"),
}


def damage(kind: str, source: Path, folder: Path) -> Path:
    """A copy of the run `source` with one file damaged as `kind` says."""
    run = copy_of(source, folder)
    checkpoint = lambda: torch.load(run / "last.pt", weights_only=True)
    if kind == "last.pt missing keys":
        state = checkpoint()
        del state["optimizer"], state["rng"]
        torch.save(state, run / "last.pt")
    elif kind == "last.pt wrong types":
        state = checkpoint()
        state["epoch"], state["schedule"] = "two", [1, 2]
        torch.save(state, run / "last.pt")
    elif kind == "last.pt model of wrong types":
        state = checkpoint()
        state["model"] = {"0.weight": "not a tensor"}
        torch.save(state, run / "last.pt")
    elif kind == "metrics.csv bad header":
        text = (run / "metrics.csv").read_text()
        (run / "metrics.csv").write_text("when,what\n" + text.split("\n", 1)[1])
    elif kind == "metrics.csv not UTF-8":
        (run / "metrics.csv").write_bytes((run / "metrics.csv").read_bytes()[:40] + b"\xff\xfe\x00garbage\n")
    elif kind == "metrics.csv a word in a middle row":
        lines = (run / "metrics.csv").read_text().splitlines()
        lines[1] = lines[1].replace(lines[1].split(",")[2], "lots", 1)
        (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    elif kind in REWRITES:
        name, content = REWRITES[kind]
        (run / name).write_bytes(content)
    elif kind == "run.lock a folder":
        (run / "run.lock").mkdir()
    elif kind == "config.yaml schedule edited":
        text = (run / "config.yaml").read_text().replace("schedule: constant", "schedule: step:step_size=1,gamma=0.5")
        (run / "config.yaml").write_text(text)
    else:
        raise AssertionError(kind)
    return run


RESUME_DAMAGE = [
    ("last.pt missing keys", "last.pt is damaged (optimizer is missing)"),
    ("last.pt wrong types", "last.pt is damaged (epoch is of the wrong type)"),
    ("last.pt model of wrong types", "does not fit this run's model"),
    ("metrics.csv bad header", "metrics.csv does not have lrlab's header"),
    ("metrics.csv not UTF-8", "metrics.csv is not UTF-8"),
    ("metrics.csv a word in a middle row", "is not a number"),
    ("steps.csv bad header", "steps.csv does not have lrlab's header"),
    ("steps.csv not UTF-8", "steps.csv is not UTF-8"),
    ("status.json not an object", "status.json is damaged"),
    ("status.json not JSON", "status.json is damaged"),
    ("config.yaml not UTF-8", "config.yaml is not UTF-8"),
    ("run.lock a folder", "run.lock is not lrlab's lock file"),
    ("correct.npz not a zip", "correct.npz is damaged"),
    ("config.yaml schedule edited", "last.pt was saved by a run with a different schedule"),
]


def build_cases(earlier: dict[str, Path], scratch: Path, live_pid: int) -> list[dict]:
    """(id, argv, what the one line must say, folder that must not change) for every hostile command."""
    cases = []

    def add(case_id: str, argv: list[str], says: str, guarded: Path | None = None, seconds: int = 30) -> None:
        cases.append({"id": case_id, "argv": argv, "says": says, "guarded": str(guarded) if guarded else None,
                      "fingerprint": fingerprint(guarded) if guarded else None, "seconds": seconds})

    fresh = lambda name: str(scratch / "fresh" / name)
    # 2. Input that hangs or eats memory.
    add("lambda power tower", ["doctor", "lambda:lr_lambda=9**9**9"], "beyond a float's range")
    add("lambda string times a billion", ["doctor", "lambda:lr_lambda='a'*10**9"], "is not a number")
    add("lambda nested unary minus", ["doctor", "lambda:lr_lambda=" + "-" * 150 + "1"], "nests deeper than")
    add("lambda a megabyte long", ["doctor", "lambda:lr_lambda=" + "1+" * 500_000 + "1"], "characters long")
    add("spec a megabyte long", ["preview", "step:step_size=" + "9" * 1_000_000], "characters long")
    add("preview a billion epochs", ["preview", "constant", "--epochs", "1000000000"], "previews")
    add("train a billion epochs", ["train", *TINY, "--epochs", "1000000000", "--out", fresh("e")], "epochs 1000000000 is more than")
    add("train a huge seed", ["train", *TINY, "--seed", "99999999999999999999", "--out", fresh("s")], "seed 99999999999999999999 is more than")
    add("train a million wide", ["train", *TINY[:4], "--width", "1000000", "--quiet", "--out", fresh("w")], "GiB of cpu memory")
    add("train image size 100000", ["train", *TINY, "--image-size", "100000", "--out", fresh("i")], "image_size 100000 is more than")
    add("train image size 4096", ["train", *TINY, "--image-size", "4096", "--memory-budget", "1G", "--out", fresh("i2")],
        "more than the memory budget")
    alias = scratch / "aliases.yaml"
    alias.write_text("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                     "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n")
    add("config of YAML aliases", ["train", "--config", str(alias), "--out", fresh("y")], "aliases")
    add("config from /dev/urandom", ["train", "--config", "/dev/urandom", "--out", fresh("u")], "not a regular file")
    add("config a folder", ["train", "--config", str(scratch), "--out", fresh("u2")], "Is a directory")
    nested = scratch / "nested.yaml"
    nested.write_text("[" * 50_000)
    add("config nested 50000 deep", ["train", "--config", str(nested), "--out", fresh("n")], "not valid YAML")
    cifar = scratch / "cifar-shared"
    cifar.mkdir()
    write_cifar10_archive(cifar / "cifar-10-python.tar.gz", train_batch=shared_list_cifar_batch())
    add("CIFAR of shared nested lists", ["train", *TINY[2:], "--dataset", "cifar10", "--data-dir", str(cifar),
                                         "--out", fresh("c")], "labels that are not whole numbers")
    # 3. Specs that parse, then crash.
    for spec, rule in [("lambda:lr_lambda=0", "positive, finite"), ("constant-factor:factor=0", "divides the LR by factor"),
                       ("step:step_size=0", "modulo step_size"), ("cosine:T_max=0", "divides by T_max"),
                       ("cyclic:base_lr=0.01,max_lr=0.1,step_size_up=0", "divides by the steps"),
                       ("polynomial:power=-1", "raises 0 to this power"), ("plateau:patience=-1", "zero or more"),
                       ("exponential:gamma=0", "positive"), ("linear:total_iters=0", "divides by total_iters"),
                       ("onecycle:max_lr=0.1,div_factor=0", "divides max_lr by it"), ("step:step_size=2,gamma=1e999", "finite")]:
        add(f"schedule {spec}", ["train", *TINY, "--epochs", "1", "--schedule", spec, "--out", fresh(spec.split(":")[0])], rule)
    for optimizer, says in [("sgd:lr=1e308", "at most"), ("lbfgs:lr=0.1", "closure"), ("sparseadam:lr=0.1", "sparse gradients"),
                            ("sgd:lr=-1", "positive")]:
        add(f"optimizer {optimizer}", ["train", *TINY, "--optimizer", optimizer, "--out", fresh("o")], says)
    add("an epoch of no batch", ["train", *TINY, "--limit-train", "1", "--val-fraction", "0", "--out", fresh("l")], "make no batch")
    labels = scratch / "cifar-labels"
    labels.mkdir()
    write_cifar10_archive(labels / "cifar-10-python.tar.gz",
                          train_batch=pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 10, 3]}, protocol=2))
    add("CIFAR labels out of range", ["train", *TINY[2:], "--dataset", "cifar10", "--data-dir", str(labels),
                                      "--out", fresh("cl")], "labels outside 0..9")
    # 4. Damaged run files: one line naming the file, and the damaged folder left as it was.
    for kind, says in RESUME_DAMAGE:
        run = damage(kind, earlier["run"], scratch / "damaged" / kind.replace(" ", "_"))
        add(f"resume with {kind}", ["train", "--out", str(run), "--resume", "--quiet"], says, guarded=run)
    for kind in ("lr_find.json damaged", "lr_find.json not JSON"):
        run = damage(kind, earlier["auto"], scratch / "damaged" / kind.replace(" ", "_"))
        # an interrupted run whose range test record is damaged
        state = torch.load(run / "last.pt", weights_only=True)
        (run / "status.json").write_text('{"state": "interrupted"}')
        add(f"resume with {kind}", ["train", "--out", str(run), "--resume", "--epochs", "1", "--quiet"], "lr_find.json is damaged",
            guarded=run)
        assert state["epoch"] == 1
    for name, text in [("empty", ""), ("no variants", '{"base_config": {}, "variants": [], "seeds": [0], "baseline": "x"}'),
                       ("a list", "[]"), ("a label leading out", None)]:
        comparison = copy_of(earlier["comparison"], scratch / "comparisons" / name.replace(" ", "_"))
        if text is None:
            manifest = json.loads((comparison / "comparison.json").read_text())
            manifest["variants"][0]["label"] = ".."
            text = json.dumps(manifest)
        (comparison / "comparison.json").write_text(text)
        add(f"report of comparison.json {name}", ["report", str(comparison)], "comparison.json is damaged", guarded=comparison)
    add("report of a file", ["report", str(earlier["run"] / "metrics.csv")], "is not a folder", guarded=earlier["run"])
    comparison = copy_of(earlier["comparison"], scratch / "comparisons" / "bad_status")
    (next(comparison.glob("StepLR*/seed-0")) / "status.json").write_text('"finished"')
    add("report with a status.json that is a string", ["report", str(comparison)], "status.json is damaged", guarded=comparison)
    # 1. Another live process holds the lock: nothing is written, lr=auto's range test included.
    locked = copy_of(earlier["run"], scratch / "locked")
    (locked / "run.lock").write_text(f"{live_pid} {os.uname().nodename}\n")
    for argv in (["--resume"], ["--overwrite"], ["--overwrite", "--optimizer", "sgd:lr=auto"], []):
        add(f"train into a locked run {' '.join(argv)}", ["train", *TINY, "--epochs", "3", *argv, "--out", str(locked)],
            "is in use by process", guarded=locked)
    locked_comparison = copy_of(earlier["comparison"], scratch / "locked-comparison")
    (locked_comparison / "run.lock").write_text(f"{live_pid} {os.uname().nodename}\n")
    add("compare into a locked comparison", ["compare", "--schedules", "constant", "step:step_size=1,gamma=0.5", "--seeds", "0", "1",
                                             "--epochs", "1", "--lr", "auto", *TINY[:-1], "--out", str(locked_comparison)],
        "is in use by process", guarded=locked_comparison)
    # 5. A user's folder.
    theirs = scratch / "theirs"
    theirs.mkdir()
    (theirs / "metrics.csv").write_text("their,own\n1,2\n")
    add("train into a folder of someone else's metrics.csv", ["train", *TINY, "--out", str(theirs)], "holds files lrlab did not make",
        guarded=theirs)
    add("compare into a folder of someone else's files", ["compare", "--schedules", "constant", "--seeds", "0", "--epochs", "1",
                                                          *TINY[:-1], "--out", str(theirs)], "holds files lrlab did not make",
        guarded=theirs)
    not_utf8 = os.fsdecode(bytes(scratch / "fresh") + b"/out-\xff")
    add("compare with a non-UTF-8 --out", ["compare", "--schedules", "constant", "--seeds", "0", "--epochs", "1",
                                           *TINY[:-1], "--out", not_utf8], "not valid UTF-8")
    # 6. A run refused before training leaves no folder.
    add("train on a missing folder data set", ["train", *TINY[2:], "--dataset", f"folder:{scratch / 'nowhere'}",
                                               "--out", fresh("deep/er/run")], "does not exist")
    return cases


@pytest.fixture(scope="module")
def outcomes(earlier, tmp_path_factory):
    scratch = tmp_path_factory.mktemp("hostile")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        cases = build_cases(earlier, scratch, live.pid)
        (scratch / "cases.json").write_text(json.dumps(cases))
        finished = subprocess.run([sys.executable, str(HERE / "hostile_cli.py"), str(scratch / "cases.json")],
                                  capture_output=True, text=True, timeout=600, cwd=scratch)
    finally:
        live.kill()
        live.wait()
    results = {}
    for line in finished.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            results[record["id"]] = record
    return {case["id"]: (case, results.get(case["id"]), scratch) for case in cases}


CASE_IDS = [
    "lambda power tower", "lambda string times a billion", "lambda nested unary minus", "lambda a megabyte long",
    "spec a megabyte long", "preview a billion epochs", "train a billion epochs", "train a huge seed", "train a million wide",
    "train image size 100000", "train image size 4096", "config of YAML aliases", "config from /dev/urandom", "config a folder",
    "config nested 50000 deep", "CIFAR of shared nested lists",
    *[f"schedule {s}" for s in ("lambda:lr_lambda=0", "constant-factor:factor=0", "step:step_size=0", "cosine:T_max=0",
                                "cyclic:base_lr=0.01,max_lr=0.1,step_size_up=0", "polynomial:power=-1", "plateau:patience=-1",
                                "exponential:gamma=0", "linear:total_iters=0", "onecycle:max_lr=0.1,div_factor=0",
                                "step:step_size=2,gamma=1e999")],
    *[f"optimizer {o}" for o in ("sgd:lr=1e308", "lbfgs:lr=0.1", "sparseadam:lr=0.1", "sgd:lr=-1")],
    "an epoch of no batch", "CIFAR labels out of range",
    *[f"resume with {kind}" for kind, _ in RESUME_DAMAGE], "resume with lr_find.json damaged", "resume with lr_find.json not JSON",
    *[f"report of comparison.json {n}" for n in ("empty", "no variants", "a list", "a label leading out")],
    "report of a file", "report with a status.json that is a string",
    *[f"train into a locked run {' '.join(a)}" for a in (["--resume"], ["--overwrite"], ["--overwrite", "--optimizer", "sgd:lr=auto"], [])],
    "compare into a locked comparison", "train into a folder of someone else's metrics.csv",
    "compare into a folder of someone else's files", "compare with a non-UTF-8 --out", "train on a missing folder data set",
]


@pytest.mark.parametrize("hostile_case", CASE_IDS)
def test_each_hostile_command_ends_in_one_bounded_line_with_status_2_and_changes_nothing(outcomes, hostile_case):
    case, result, scratch = outcomes[hostile_case]
    assert result is not None, "the command never reported (the process died: memory?)"
    lines = result["stderr"].strip().splitlines()
    assert result["status"] == 2, result["stderr"][-2000:]
    assert len(lines) == 1 and len(lines[0]) <= MESSAGE_LIMIT, result["stderr"][:2000]
    assert "Traceback" not in result["stderr"]
    assert case["says"] in lines[0], lines[0]
    assert result["seconds"] < SECONDS, f"took {result['seconds']:.1f} s"
    if case["guarded"]:
        assert fingerprint(Path(case["guarded"])) == case["fingerprint"]


def test_a_refused_run_leaves_no_folder_behind(outcomes):
    _, result, scratch = outcomes["train on a missing folder data set"]
    assert result["status"] == 2 and not (scratch / "fresh" / "deep").exists()
    assert not (scratch / "fresh").exists()  # no refused command of the batch left a folder


def test_every_hostile_command_is_checked(outcomes):
    assert sorted(outcomes) == sorted(CASE_IDS)


# -- behaviours beyond "one line, status 2" ---------------------------------------------------------


def test_a_last_row_cut_off_mid_write_is_an_unfinished_epoch_redone_on_resume(tmp_path):
    whole = tiny(tmp_path / "whole", epochs=3)
    train(whole)
    config = tiny(tmp_path / "cut", epochs=3)
    with pytest.raises(KeyboardInterrupt):
        from lrlab import Trainer

        def stop(epoch, metrics):
            if epoch == 2:
                raise KeyboardInterrupt

        Trainer(config, on_epoch=stop).fit()
    run = RunDirectory(config.out)
    # The process died while writing epoch 3's rows: a partial step row and a metrics row cut mid-number.
    with open(run.steps_path, "a") as handle:
        handle.write("60,3,0.0")
    with open(run.metrics_path, "a") as handle:
        handle.write("3,0.05,0.41")
    assert [row["epoch"] for row in run.read_metrics()] == [1, 2]
    assert main(["train", "--out", config.out, "--resume", "--quiet"]) == 0
    rows = run.read_metrics()
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert all(value == value for row in rows for value in row.values())  # no NaN anywhere
    strip = lambda rows: [{k: v for k, v in row.items() if "seconds" not in k} for row in rows]
    assert strip(rows) == strip(RunDirectory(whole.out).read_metrics())
    assert run.read_steps() == RunDirectory(whole.out).read_steps()


def test_a_second_process_is_refused_before_lr_auto_and_never_writes_into_the_first_run(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(["lrlab", "train", *TINY, "--epochs", "3", "--out", str(out)],
                             env={**os.environ, **slow_epochs(1)}, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "metrics.csv").exists():
        time.sleep(0.05)
    status = main(["train", *TINY, "--epochs", "2", "--optimizer", "sgd:lr=auto,momentum=0.9", "--overwrite", "--out", str(out)])
    assert status == 2
    first.communicate(timeout=120)
    assert first.returncode == 0
    run = RunDirectory(out)
    assert [row["epoch"] for row in run.read_metrics()] == [1, 2, 3]
    assert "epochs: 3" in run.config_path.read_text() and "lr=auto" not in run.config_path.read_text()
    assert not (out / "lr_find.json").exists()


def test_a_comparison_does_not_mark_failed_a_run_another_process_is_training(tmp_path, capsys):
    from lrlab.grid import Variant, run_comparison, run_path

    out = tmp_path / "comparison"
    base = tiny(out, epochs=1)
    other = run_path(out, "constant", 0)
    other.mkdir(parents=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (other / "run.lock").write_text(f"{live.pid} {os.uname().nodename}\n")
        outcomes = run_comparison(base, [Variant("constant", "constant")], [0], out, show_progress=False)
    finally:
        live.kill()
        live.wait()
    assert outcomes[0].state == "failed" and "in use by process" in outcomes[0].reason
    assert sorted(p.name for p in other.iterdir()) == ["run.lock"]  # no status.json written into it


def test_run_files_are_as_readable_as_the_umask_allows(tmp_path):
    saved = os.umask(0o022)
    try:
        config = tiny(tmp_path / "run", epochs=1)
        train(config)
    finally:
        os.umask(saved)
    for name in ("config.yaml", "status.json", "metrics.csv", "steps.csv", "last.pt", "best.pt"):
        assert (Path(config.out) / name).stat().st_mode & 0o777 == 0o644, name


def image_folder(root: Path, classes: tuple[str, ...], per_class: int) -> Path:
    from PIL import Image

    for label in classes:
        (root / label).mkdir(parents=True)
        for index in range(per_class):
            Image.new("RGB", (8, 8), (index * 40, 0, 0)).save(root / label / f"{index}.png")
    return root


def test_a_folder_walk_follows_no_link_out_of_the_root_or_into_a_loop_and_counts_each_file_once(tmp_path, capsys):
    from PIL import Image

    from lrlab.data import load_dataset

    root = image_folder(tmp_path / "images", ("cat", "dog"), 3)
    (root / "cat" / "loop").symlink_to(root)            # a link to a parent folder
    (root / "dog" / "here").symlink_to(".")              # a link to its own folder
    (root / "dog" / "again.png").symlink_to(root / "dog" / "0.png")  # the same file twice
    outside = tmp_path / "outside.png"
    Image.new("RGB", (8, 8)).save(outside)
    (root / "cat" / "outside.png").symlink_to(outside)   # a file outside the root
    (root / "bird").symlink_to(tmp_path)                 # a class folder outside the root
    started = time.perf_counter()
    data = load_dataset(f"folder:{root}", image_size=8, test_fraction=0.5)
    assert time.perf_counter() - started < 10
    assert data.classes == ["cat", "dog"]
    assert len(data.train_labels) + len(data.test_labels) == 6


def test_a_decompression_bomb_png_is_skipped_and_counted(tmp_path, capsys):
    from PIL import Image

    from lrlab.data import load_dataset

    root = image_folder(tmp_path / "images", ("a", "b"), 2)
    Image.new("1", (20_000, 20_000)).save(root / "a" / "bomb.png")  # 400 megapixels in a few KB
    assert (root / "a" / "bomb.png").stat().st_size < 200_000
    data = load_dataset(f"folder:{root}", image_size=8, test_fraction=0.5)
    assert len(data.train_labels) + len(data.test_labels) == 4
    assert "skipped 1 unreadable" in capsys.readouterr().err


def test_the_doctor_flags_lrs_that_stop_being_positive_and_a_warmup_longer_than_the_run(capsys):
    assert main(["doctor", "lambda:lr_lambda=1-epoch/10", "--epochs", "20", "--steps-per-epoch", "1"]) == 1
    assert "the LR becomes -0.1 x --lr at step 12 (epoch 12)" in capsys.readouterr().out
    assert main(["doctor", "lambda:lr_lambda=1/(5-epoch)", "--epochs", "8"]) == 1
    assert "fails at epoch 5: float division by zero" in capsys.readouterr().out
    assert main(["doctor", "cosine:T_max=5", "--epochs", "5"]) == 0  # annealing to exactly zero is fine
    assert main(["doctor", "warmup(linear,epochs=100)+cosine:T_max=5", "--epochs", "5"]) == 1
    out = capsys.readouterr().out
    assert "the warmup takes 100 epochs but the whole run has 5 epochs" in out and "-95" not in out


def test_messages_are_cut_between_words_and_name_types_a_user_can_write():
    from lrlab.specs import _describe

    assert clip("resume it with --resume or start afresh with --overwrite", 30) == "resume it with --resume or..."
    assert clip("one\nline", 80) == "one line"
    assert _describe("float | torch.Tensor") == "float"
    assert _describe("float | Tensor | list[float]") == "float or list[float]"
    with pytest.raises(UsageError) as refused:
        from lrlab.optimizers import parse_optimizer

        parse_optimizer("sgd:lr='fast'")
    assert "torch." not in str(refused.value)
