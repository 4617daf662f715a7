import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lrlab import Trainer, load_config, train
from lrlab.engine import evaluate
from lrlab.errors import UsageError
from lrlab.optimizers import set_training_mode
from lrlab.runs import METRIC_COLUMNS, STEP_COLUMNS, RunDirectory

FASHION = Path("/usr/share/datasets/fashion-mnist")


def without_timing(rows):
    return [{k: v for k, v in row.items() if k not in ("seconds", "elapsed_seconds")} for row in rows]


def test_a_run_leaves_a_complete_run_directory(tiny_config):
    config = tiny_config(schedule="step:step_size=1,gamma=0.5", epochs=3)
    result = train(config)
    run = RunDirectory(config.out)
    metrics, steps = run.read_metrics(), run.read_steps()
    assert result.state == "finished" and run.read_status()["state"] == "finished"
    assert list(metrics[0]) == list(METRIC_COLUMNS) and list(steps[0]) == list(STEP_COLUMNS)
    assert [row["epoch"] for row in metrics] == [1, 2, 3]
    steps_per_epoch = -(-1437 // 64)
    assert [row["step"] for row in steps] == list(range(1, 3 * steps_per_epoch + 1))
    assert [row["lr"] for row in metrics] == [0.05, 0.025, 0.0125]
    assert result.best_test_acc == max(row["test_acc"] for row in metrics) > 0.5
    best = torch.load(run.best_path, weights_only=True)
    assert best["epoch"] == result.best_epoch and best["test_acc"] == result.best_test_acc
    last = torch.load(run.last_path, weights_only=True)
    assert last["epoch"] == 3 and set(last) >= {"model", "optimizer", "schedule", "rng"}


def test_config_yaml_repeats_the_run_and_records_versions(tiny_config):
    config = tiny_config()
    train(config)
    saved_text = (Path(config.out) / "config.yaml").read_text()
    assert "torch: " in saved_text and "torchvision: " in saved_text and "lrlab: " in saved_text
    assert load_config(Path(config.out) / "config.yaml") == config


def test_same_seed_gives_identical_metrics_and_a_new_seed_does_not(tiny_config, tmp_path):
    first = tiny_config(out=str(tmp_path / "a"))
    again = tiny_config(out=str(tmp_path / "b"))
    other = tiny_config(out=str(tmp_path / "c"), seed=1)
    for config in (first, again, other):
        train(config)
    read = lambda c: without_timing(RunDirectory(c.out).read_metrics())
    assert read(first) == read(again)
    assert read(first) != read(other)


def test_every_schedule_with_one_seed_starts_from_the_same_weights(tiny_config, tmp_path):
    weights = []
    for schedule in ("constant", "cosine:T_max=3", "onecycle:max_lr=0.1"):
        trainer = Trainer(tiny_config(schedule=schedule, out=str(tmp_path / schedule)))
        weights.append(torch.cat([p.detach().flatten() for p in trainer.model.parameters()]))
    assert torch.equal(weights[0], weights[1]) and torch.equal(weights[0], weights[2])


def test_resume_after_a_kill_matches_an_uninterrupted_run(tiny_config, tmp_path):
    epochs = 6
    uninterrupted = tiny_config(epochs=epochs, schedule="onecycle:max_lr=0.1", out=str(tmp_path / "whole"))
    train(uninterrupted)
    killed = tiny_config(epochs=epochs, schedule="onecycle:max_lr=0.1", out=str(tmp_path / "killed"))
    command = [sys.executable, "-m", "lrlab", "train", "--dataset", "digits", "--model", "cnn", "--width", "4",
               "--epochs", str(epochs), "--batch-size", "64", "--schedule", "onecycle:max_lr=0.1",
               "--optimizer", "sgd:lr=0.05,momentum=0.9", "--out", killed.out, "--quiet"]
    # Slow each epoch down so the kill lands mid-run, after some epochs and before the end.
    process = subprocess.Popen(command, env={**os.environ, "LRLAB_TEST_EPOCH_DELAY": "0.3"})
    metrics_path = Path(killed.out) / "metrics.csv"
    deadline = time.time() + 60
    while time.time() < deadline and (not metrics_path.exists() or len(metrics_path.read_text().splitlines()) < 3):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before_kill = len(RunDirectory(killed.out).read_metrics())
    assert 2 <= done_before_kill < epochs
    result = train(killed, resume=True)
    assert result.state == "finished" and result.epochs_completed == epochs
    whole, resumed = RunDirectory(uninterrupted.out), RunDirectory(killed.out)
    assert without_timing(resumed.read_metrics()) == without_timing(whole.read_metrics())
    assert resumed.read_steps() == whole.read_steps()
    final = lambda run: torch.load(run.last_path, weights_only=True)["model"]
    assert all(torch.equal(a, b) for a, b in zip(final(whole).values(), final(resumed).values()))


def test_resuming_a_finished_run_does_nothing(tiny_config):
    config = tiny_config()
    train(config)
    before = (Path(config.out) / "metrics.csv").read_text()
    result = train(config, resume=True)
    assert result.state == "finished" and (Path(config.out) / "metrics.csv").read_text() == before


def test_resume_with_different_settings_is_refused(tiny_config):
    train(tiny_config())
    with pytest.raises(UsageError, match="started with different schedule"):
        train(tiny_config(schedule="cosine:T_max=3"), resume=True)


def test_a_nan_loss_ends_the_run_as_diverged_and_keeps_the_best_checkpoint(tiny_config):
    # Epoch 1 trains at a sane LR; the schedule then multiplies it by 1e10, which overflows float32.
    config = tiny_config(model="mlp", width=16, schedule="exponential:gamma=1e10", optimizer="sgd:lr=0.05,momentum=0.9", epochs=5)
    result = train(config)
    run = RunDirectory(config.out)
    status = run.read_status()
    assert result.state == "diverged" and status["state"] == "diverged"
    assert status["epoch"] >= 2 and status["step"] > 23
    assert "nan" in status["loss"].lower() or "inf" in status["loss"].lower()
    assert torch.load(run.best_path, weights_only=True)["epoch"] == 1
    assert all(row["epoch"] < status["epoch"] for row in run.read_metrics())


def test_schedule_free_optimizer_is_evaluated_with_its_averaged_weights(tiny_config):
    config = tiny_config(optimizer="adamw-schedulefree:lr=0.01", epochs=3)
    trainer = Trainer(config)
    result = trainer.fit()
    assert result.state == "finished" and result.final_test_acc > 0.5
    assert trainer.optimizer.param_groups[0]["train_mode"] is False
    recorded = RunDirectory(config.out).read_metrics()[-1]["test_acc"]
    assert evaluate(trainer.test_loader, trainer.model, trainer.loss_fn)[1] == recorded
    set_training_mode(trainer.optimizer, True)  # the raw iterate differs from what was evaluated
    assert any(not torch.equal(a, b) for a, b in zip(trainer.model.state_dict().values(),
                                                      torch.load(RunDirectory(config.out).last_path, weights_only=True)["model"].values()))


def test_an_existing_run_is_refused_and_left_untouched(tiny_config):
    config = tiny_config()
    train(config)
    before = {p.name: p.read_bytes() for p in Path(config.out).iterdir()}
    with pytest.raises(UsageError, match="already holds a run; pass --resume .* or --overwrite"):
        train(tiny_config(epochs=1))
    assert {p.name: p.read_bytes() for p in Path(config.out).iterdir()} == before


def test_overwrite_replaces_the_run(tiny_config):
    train(tiny_config())
    train(tiny_config(epochs=1), overwrite=True)
    assert len(RunDirectory(tiny_config().out).read_metrics()) == 1


def test_an_unwritable_output_directory_is_refused_before_training(tiny_config, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UsageError, match="cannot write to"):
        train(tiny_config(out=str(blocker / "run")))


def test_a_checkpoint_from_a_different_model_is_refused(tiny_config):
    config = tiny_config(epochs=1)
    train(config)
    with pytest.raises(UsageError, match="started with different width"):
        train(tiny_config(epochs=1, width=8), resume=True)
    # Same config, but the checkpoint file itself holds another model's weights.
    run = RunDirectory(config.out)
    checkpoint = torch.load(run.last_path, weights_only=True)
    checkpoint["model"] = {"weight": torch.zeros(3)}
    torch.save(checkpoint, run.last_path)
    with pytest.raises(UsageError, match="does not fit this run's model"):
        Trainer(config, resume=True).prepare()


def test_tensorboard_events_are_written_when_asked(tiny_config):
    pytest.importorskip("tensorboard")
    config = tiny_config(tensorboard=True, epochs=1)
    train(config)
    assert list(Path(config.out).glob("events.out.tfevents.*"))


@pytest.mark.parametrize("model", ["mlp", "resnet", "torchvision:resnet18"])
def test_each_model_trains_on_grey_images(tiny_config, model):
    width = None if model.startswith("torchvision") else 4
    config = tiny_config(model=model, width=width, epochs=1, limit_train=128, limit_test=64, image_size=16 if "torchvision" in model else None)
    assert train(config).state == "finished"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; the CUDA path is checked where one exists")
def test_cuda_run_uses_bf16_and_channels_last_and_learns(tiny_config):
    trainer = Trainer(tiny_config(device="cuda", epochs=2))
    assert trainer.use_bf16 and trainer.channels_last
    assert trainer.fit().final_test_acc > 0.5


@pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_cnn_learns_real_fashion_mnist_on_a_slice(tiny_config):
    # A decaying LR settles the last epoch; seeds 0-2 end at 70-72% here. Chance is 10%.
    config = tiny_config(dataset="fashion-mnist", width=8, epochs=4, limit_train=3000, limit_test=1000,
                         schedule="cosine:T_max=4")
    result = train(config)
    assert result.final_test_acc > 0.6


@pytest.mark.parametrize("signal_number, exit_status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_mark_the_run_interrupted_and_it_resumes(tiny_config, tmp_path, signal_number, exit_status):
    out = tmp_path / "run"
    command = ["lrlab", "train", "--dataset", "digits", "--model", "cnn", "--width", "4", "--epochs", "6",
               "--batch-size", "64", "--out", str(out), "--quiet"]
    process = subprocess.Popen(command, env={**os.environ, "LRLAB_TEST_EPOCH_DELAY": "0.3"},
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "last.pt").exists():
        time.sleep(0.05)
    process.send_signal(signal_number)
    _, error = process.communicate(timeout=60)
    assert process.returncode == exit_status
    assert RunDirectory(out).read_status()["state"] == "interrupted"
    assert f"lrlab train --out {out} --resume" in error
    from lrlab.cli import main

    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0  # exactly what the hint says
    assert len(RunDirectory(out).read_metrics()) == 6


def test_a_second_process_on_the_same_run_directory_is_refused(tiny_config, tmp_path):
    config = tiny_config()
    owner = subprocess.Popen(["sleep", "30"])
    try:
        Path(config.out).mkdir(parents=True)
        (Path(config.out) / "run.lock").write_text(f"{owner.pid}\n")
        with pytest.raises(UsageError, match=f"in use by process {owner.pid}"):
            train(config)
        assert not (Path(config.out) / "config.yaml").exists()
    finally:
        owner.kill()
        owner.wait()


def test_a_stale_lock_from_a_dead_process_is_taken_over_and_says_so(tiny_config, capsys):
    config = tiny_config(epochs=1)
    gone = subprocess.Popen(["true"])
    gone.wait()
    Path(config.out).mkdir(parents=True)
    (Path(config.out) / "run.lock").write_text(f"{gone.pid}\n")
    assert train(config).state == "finished"
    assert f"taking over the stale lock of {config.out} (process {gone.pid} is gone)" in capsys.readouterr().err
    assert not (Path(config.out) / "run.lock").exists()
