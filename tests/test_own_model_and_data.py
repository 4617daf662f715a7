"""Your own model and your own data: import paths on the command line, Python objects in the API."""

import csv
import socket
from pathlib import Path

import pytest
import torch
import yaml
from helpers import without_timing

import lrlab
from lrlab.cli import main
from lrlab.config import RunConfig
from lrlab.data import load_dataset
from lrlab.data.torch_datasets import DatasetImages
from lrlab.engine import Trainer
from lrlab.executors import _train_on_ray_node
from lrlab.runs import RunDirectory
from lrlab.schedules import ScheduleDriver

OWN = Path(__file__).parent / "own_code"
NETS = str(OWN / "nets.py")
DIGITS = str(OWN / "digits_data.py")
TINY = ["--epochs", "2", "--batch-size", "64", "--optimizer", "sgd:lr=0.05,momentum=0.9", "--quiet"]


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def own_code_importable(monkeypatch):
    """tests/own_code on sys.path, as a user's package would be installed or on PYTHONPATH."""
    monkeypatch.syspath_prepend(str(OWN))


def test_a_model_from_a_file_trains_with_its_model_args_and_is_recorded_by_import_path(tmp_path, monkeypatch):
    monkeypatch.chdir(OWN.parent)
    out = tmp_path / "run"
    assert main(["train", "--model", "own_code/nets.py:Net", "--model-args", "width=8", "--dataset", "digits",
                 "--limit-train", "256", *TINY, "--out", str(out)]) == 0
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["model"] == f"{NETS}:Net" and recorded["model_args"] == "width=8"
    weights = torch.load(out / "best.pt", weights_only=True)["model"]
    assert weights["features.0.weight"].shape == (8, 1, 3, 3)


def test_a_function_returning_a_model_is_built_with_only_its_model_args(tmp_path):
    assert main(["train", "--model", f"{NETS}:make_net", "--model-args", "width=3", "--dataset", "digits",
                 "--limit-train", "128", *TINY, "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    weights = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["model"]
    assert weights["features.0.weight"].shape == (3, 1, 3, 3)


@pytest.mark.parametrize("model, says", [
    (f"{NETS}:Net --model-args widht=8", "unknown argument 'widht' (did you mean 'width'?)"),
    (f"{OWN}/missing.py:Net", "missing.py does not exist"),
    (f"{NETS}:Nett", "has no 'Nett' (did you mean 'Net'?)"),
    (f"{NETS}:not_a_model", "returned a str, not an nn.Module"),
    (f"{NETS}:a_built_model", "is an nn.Module instance"),
    (f"{OWN}/broken.py:Net", "importing"),
    (f"{NETS}:Net --model-args classes=3", "should return logits of shape (batch, 10)"),
    ("no_such_package.nets:Net", "no module named 'no_such_package'"),
    (f"{NETS}:Net --width 8", "pass --model-args width=8"),
])
def test_a_bad_model_ends_with_one_line_and_status_2(tmp_path, capsys, model, says):
    name, *more = model.split(" ")
    assert main(["train", "--model", name, *more, "--dataset", "digits", *TINY, "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert says in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.parametrize("function, says", [
    ("load_flat", "the image has shape (8, 8); it should be (C, H, W)"),
    ("load_float_labels", "the label is 0.0 (float); labels should be ints"),
    ("load_one", "should be a (train, test) pair of map-style torch Datasets"),
    ("lod", "has no 'lod' (did you mean 'load'?)"),
])
def test_a_bad_dataset_ends_with_one_line_and_status_2(tmp_path, capsys, function, says):
    assert main(["train", "--model", "mlp", "--dataset", f"{DIGITS}:{function}", *TINY, "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert says in error and len(error.strip().splitlines()) == 1


def test_bad_datasets_raise_usage_error_from_python(tmp_path, own_code_importable):
    import digits_data

    with pytest.raises(lrlab.UsageError, match=r"labels should be ints"):
        lrlab.train(model="mlp", data=digits_data.load_float_labels(), out=str(tmp_path / "run"), quiet=True)
    with pytest.raises(lrlab.UsageError, match=r"should be \(C, H, W\)"):
        lrlab.compare(model="mlp", data=digits_data.load_flat(), schedules=["constant"], out=str(tmp_path / "cmp"))


def test_a_dataset_by_module_path_trains_and_compares_from_the_command_line(tmp_path, capsys, own_code_importable):
    out = tmp_path / "cmp"
    assert main(["compare", "--model", f"{NETS}:Net", "--dataset", "digits_data:load", "--schedules", "constant",
                 "exponential:gamma=0.5", "--seeds", "0", *[a for a in TINY if a != "--quiet"], "--out", str(out)]) == 0
    recorded = yaml.safe_load((out / "constant" / "seed-0" / "config.yaml").read_text())
    assert recorded["dataset"] == "digits_data:load"
    assert len(RunDirectory(out / "ExponentialLR-0.5" / "seed-0").read_metrics()) == 2
    assert "report:" in capsys.readouterr().out


def test_an_import_path_model_resumes_from_another_folder_to_the_uninterrupted_run(tmp_path, monkeypatch):
    config = RunConfig(model=f"{NETS}:Net", model_args="width=4", dataset=f"{DIGITS}:load", epochs=3, batch_size=64,
                       optimizer="sgd:lr=0.05,momentum=0.9", schedule="cosine:T_max=3", quiet=True)
    lrlab.train(config, out=str(tmp_path / "whole"))

    def stop_after_first_epoch(epoch, metrics):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(lrlab.RunConfig(**{**config.to_dict(), "out": str(tmp_path / "half")}).validate(),
                on_epoch=stop_after_first_epoch).fit()
    monkeypatch.chdir(tmp_path)  # the recorded path is absolute: the file is found from anywhere
    assert main(["train", "--out", str(tmp_path / "half"), "--resume"]) == 0
    assert without_timing(RunDirectory(tmp_path / "half").read_metrics()) == \
        without_timing(RunDirectory(tmp_path / "whole").read_metrics())


def test_a_dataset_over_a_tiny_memory_budget_streams_with_the_same_batches_and_metrics(tmp_path):
    streamed = load_dataset(f"{DIGITS}:load", memory_budget="4K")
    assert isinstance(streamed.train_images, DatasetImages)
    assert isinstance(load_dataset(f"{DIGITS}:load").train_images, torch.Tensor)
    options = ["--model", f"{NETS}:Net", "--dataset", f"{DIGITS}:load", "--augment", "crop", "--limit-train", "300", *TINY]
    assert main(["train", *options, "--out", str(tmp_path / "memory")]) == 0
    assert main(["train", *options, "--memory-budget", "4K", "--data-workers", "1", "--out", str(tmp_path / "streamed")]) == 0
    in_memory = without_timing(RunDirectory(tmp_path / "memory").read_metrics())
    assert without_timing(RunDirectory(tmp_path / "streamed").read_metrics()) == in_memory
    assert RunDirectory(tmp_path / "streamed").read_steps() == RunDirectory(tmp_path / "memory").read_steps()


def test_float_and_pil_images_train_as_the_same_pixels_in_uint8_do(tmp_path):
    as_float = load_dataset(f"{DIGITS}:load_float")
    as_bytes = load_dataset(f"{DIGITS}:load")
    assert as_float.train_images.dtype == torch.float32 and as_bytes.train_images.dtype == torch.uint8
    # float images are taken as given (here bytes / 255), then standardised like bytes scaled to [0, 1]
    assert torch.equal(as_float.train_images, as_bytes.train_images.float() / 255)
    # (mean, std) per channel; pytest.approx does not compare nested lists (pytest >= 9.1 refuses them)
    for from_float, from_bytes in zip(as_float.channel_statistics(), as_bytes.channel_statistics(), strict=True):
        assert from_float == pytest.approx(from_bytes)
    metrics = {}
    for function in ("load", "load_float", "load_pil"):
        out = tmp_path / function
        assert main(["train", "--model", "mlp", "--width", "16", "--dataset", f"{DIGITS}:{function}", *TINY, "--out", str(out)]) == 0
        metrics[function] = without_timing(RunDirectory(out).read_metrics())
    assert metrics["load_float"] == metrics["load"] == metrics["load_pil"]


def test_python_compare_with_a_class_and_datasets_summarises_as_lrlab_report_does(tmp_path, own_code_importable):
    import digits_data
    import nets

    out = tmp_path / "mine"
    result = lrlab.compare(model=nets.Net, data=digits_data.load(), schedules=["constant", "step:step_size=1,gamma=0.5"],
                           seeds=[0, 1], epochs=2, batch_size=64, optimizer="sgd:lr=0.05,momentum=0.9", out=str(out),
                           quiet=True)
    assert [row["schedule"] for row in result.summary] == ["constant", "StepLR(1, 0.5)"]
    assert isinstance(result.summary[1]["p_value"], float) and result.report_path == out / "report.html" and result.report_path.exists()
    recorded = yaml.safe_load((out / "constant" / "seed-0" / "config.yaml").read_text())
    assert recorded["model"] == "python:Net" and recorded["dataset"] == "python:Digits"
    (out / "summary.csv").unlink()
    assert main(["report", str(out)]) == 0
    rebuilt = read_csv(out / "summary.csv")  # the same figures, as text rounded to two decimals
    assert [(row["schedule"], float(row["final_acc_mean"])) for row in rebuilt] == [
        (row["schedule"], pytest.approx(row["final_acc_mean"], abs=0.005)) for row in result.summary]


def test_python_objects_refuse_workers_and_ray_and_say_what_to_do(tmp_path, own_code_importable):
    import nets

    with pytest.raises(lrlab.UsageError, match=r"name it by import path"):
        lrlab.compare(model=nets.Net, data="digits", schedules=["constant"], workers=2, out=str(tmp_path / "cmp"))
    assert not (tmp_path / "cmp").exists()


def test_train_takes_every_run_option_as_a_keyword_and_still_takes_a_config(tmp_path, tiny_config):
    with pytest.raises(lrlab.UsageError, match=r"unknown key 'epoch' \(did you mean 'epochs'\?\)"):
        lrlab.train(model="cnn", data="digits", epoch=3, out=str(tmp_path / "bad"))
    with pytest.raises(lrlab.UsageError, match=r"label_smoothing must be in \[0, 1\)"):
        lrlab.train(model="cnn", data="digits", label_smoothing=2.0, out=str(tmp_path / "bad"))
    by_keywords = lrlab.train(model="mlp", data="digits", width=16, epochs=2, batch_size=64, limit_train=256,
                              optimizer="sgd:lr=0.05,momentum=0.9", schedule="onecycle:max_lr=0.1", quiet=True,
                              out=str(tmp_path / "keywords"))
    by_config = lrlab.train(tiny_config(model="mlp", width=16, epochs=2, limit_train=256, schedule="onecycle:max_lr=0.1",
                                        out=str(tmp_path / "config")))
    assert by_keywords.state == by_config.state == "finished"
    assert without_timing(RunDirectory(by_keywords.path).read_metrics()) == without_timing(RunDirectory(by_config.path).read_metrics())


def test_schedule_is_the_driver_lrlab_trains_with_and_gives_its_lrs_in_a_plain_loop(tmp_path, tiny_config):
    assert lrlab.Schedule is ScheduleDriver
    run = lrlab.train(tiny_config(model="mlp", width=16, epochs=2, limit_train=256, schedule="warmup(linear,epochs=1)+cosine:T_max=1",
                                  out=str(tmp_path / "run")))
    rows = RunDirectory(run.path).read_steps()
    steps_per_epoch = len(rows) // 2
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.05)
    schedule = lrlab.Schedule("warmup(linear,epochs=1)+cosine:T_max=1", optimizer, epochs=2, steps_per_epoch=steps_per_epoch)
    seen = []
    for epoch in range(2):
        for _ in range(steps_per_epoch):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.after_step()
        schedule.after_epoch({"val_loss": 1.0})
    assert seen == pytest.approx([row["lr"] for row in rows])


def test_a_plateau_schedule_says_which_metric_after_epoch_needs():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = lrlab.Schedule("plateau:patience=0", optimizer, epochs=3, steps_per_epoch=1)
    with pytest.raises(lrlab.UsageError, match=r"monitors val_loss; pass it to after_epoch"):
        schedule.after_epoch({"loss": 1.0})


def test_a_comparison_file_holds_schedules_seeds_baseline_and_run_options(tmp_path, capsys):
    plan = tmp_path / "comparison.yaml"
    plan.write_text(yaml.safe_dump({
        "schedules": ["constant", {"label": "halving", "schedule": "step:step_size=1,gamma=0.5"}],
        "seeds": [3], "baseline": "halving", "model": f"{NETS}:Net", "model_args": "width=4", "dataset": "digits",
        "epochs": 1, "batch_size": 64, "limit_train": 256, "optimizer": "sgd:lr=0.05,momentum=0.9",
    }))
    out = tmp_path / "cmp"
    assert main(["compare", "--config", str(plan), "--out", str(out)]) == 0
    manifest = yaml.safe_load((out / "comparison.json").read_text())
    assert manifest["seeds"] == [3] and manifest["baseline"] == "halving"
    assert [v["label"] for v in manifest["variants"]] == ["constant", "halving"]
    assert RunDirectory(out / "halving" / "seed-3").read_status()["state"] == "finished"
    summary = read_csv(out / "summary.csv")
    assert [row["diff_vs_baseline"] for row in summary][1] == "baseline"
    plan.write_text(yaml.safe_dump({"schedules": ["constant"], "seed": [0]}))
    assert main(["compare", "--config", str(plan), "--out", str(tmp_path / "other")]) == 2
    plan.write_text(yaml.safe_dump({"schedules": ["constant"], "epoch": 3}))
    assert main(["compare", "--config", str(plan), "--out", str(tmp_path / "other")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert "seeds: (a list), not seed:" in errors[-2] and "did you mean 'epochs'" in errors[-1]


def test_a_worker_that_cannot_import_the_model_says_which_node(tmp_path):
    config = RunConfig(model=f"{tmp_path}/gone.py:Net", dataset="digits", epochs=1, out=str(tmp_path / "run"), quiet=True)
    [(state, reason)] = _train_on_ray_node([config.validate()], 1, False)
    assert state == "failed" and reason.startswith(f"on node {socket.gethostname()}: ") and "gone.py does not exist" in reason


def test_your_model_trains_in_one_pass_per_seed_with_the_numbers_it_has_alone(tmp_path, own_code_importable, capfd):
    import digits_data
    import nets

    common = {"model": nets.Net, "data": digits_data.load(), "schedules": ["constant", "exponential:gamma=0.5"], "seeds": [0],
              "epochs": 2, "batch_size": 64, "precision": "fp32", "optimizer": "sgd:lr=0.05,momentum=0.9", "quiet": True}
    lrlab.compare(**common, out=str(tmp_path / "pass"), runs_per_pass=2)
    assert "2 of them share a pass" in capfd.readouterr().err
    lrlab.compare(**common, out=str(tmp_path / "alone"), runs_per_pass=1)
    for folder in ("constant", "ExponentialLR-0.5"):
        grouped = RunDirectory(tmp_path / "pass" / folder / "seed-0").read_metrics()
        alone = RunDirectory(tmp_path / "alone" / folder / "seed-0").read_metrics()
        assert len(grouped) == len(alone) == 2
        for row, expected in zip(grouped, alone):
            assert row["lr"] == expected["lr"]
            for column in ("train_loss", "val_loss", "test_loss"):
                assert row[column] == pytest.approx(expected[column], abs=1e-4), (label, column)
