import contextlib
import itertools
import warnings
from pathlib import Path

import pytest
import torch

from lrlab import Trainer, load_config, train
from lrlab import engine
from lrlab.engine import evaluate, train_epoch
from lrlab.step import BATCHNORM_RECOMPUTE_BATCHES, PlainStep
from lrlab.errors import UsageError
from lrlab.optimizers import set_training_mode
from lrlab.runs import METRIC_COLUMNS, STEP_COLUMNS, RunDirectory

FASHION = Path("/usr/share/datasets/fashion-mnist")
CUDA_ONLY = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; the CUDA path is checked where one exists")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA_ONLY)]



def test_a_run_leaves_a_complete_run_directory(tiny_config):
    config = tiny_config(schedule="step:step_size=1,gamma=0.5", epochs=3)
    result = train(config)
    run = RunDirectory(config.out)
    metrics, steps = run.read_metrics(), run.read_steps()
    assert result.state == "finished" and run.read_status()["state"] == "finished"
    assert list(metrics[0]) == list(METRIC_COLUMNS) and list(steps[0]) == [*STEP_COLUMNS, "momentum"]
    assert [row["epoch"] for row in metrics] == [1, 2, 3]
    steps_per_epoch = -(-(1437 - 144) // 64)  # a tenth of the training images validate
    assert [row["step"] for row in steps] == list(range(1, 3 * steps_per_epoch + 1))
    assert [row["lr"] for row in metrics] == [0.05, 0.025, 0.0125]
    best_row = max(metrics, key=lambda row: row["val_acc"])
    assert result.best_epoch == best_row["epoch"] and result.best_test_acc == best_row["test_acc"] > 0.5
    assert result.selected_on == "validation"
    best = torch.load(run.best_path, weights_only=True)
    assert best["epoch"] == result.best_epoch and best["test_acc"] == result.best_test_acc
    last = torch.load(run.last_path, weights_only=True)
    assert last["epoch"] == 3 and set(last) >= {"model", "optimizer", "schedule", "rng"}


def _test_acc_moves_against_val_acc(metrics: list[dict]) -> bool:
    by_val = max(metrics, key=lambda row: row["val_acc"])["epoch"]
    by_test = max(metrics, key=lambda row: row["test_acc"])["epoch"]
    return by_val != by_test


def test_best_checkpoint_is_the_best_validation_epoch_not_the_best_test_epoch(tiny_config):
    # A tiny validation split and a high LR make val and test accuracy disagree about the best epoch.
    config = tiny_config(epochs=6, val_fraction=0.03, limit_train=400, optimizer="sgd:lr=0.3,momentum=0.9")
    result = train(config)
    metrics = RunDirectory(config.out).read_metrics()
    assert _test_acc_moves_against_val_acc(metrics)
    best_row = max(metrics, key=lambda row: row["val_acc"])
    assert result.best_epoch == best_row["epoch"]
    assert torch.load(RunDirectory(config.out).best_path, weights_only=True)["epoch"] == best_row["epoch"]


def test_without_a_validation_split_the_best_epoch_is_chosen_on_test_data(tiny_config):
    config = tiny_config(val_fraction=0)
    result = train(config)
    metrics = RunDirectory(config.out).read_metrics()
    assert all(row["val_acc"] != row["val_acc"] for row in metrics)  # empty: nan
    assert result.selected_on == "test" and result.best_test_acc == max(row["test_acc"] for row in metrics)
    assert len(Trainer(tiny_config(val_fraction=0, out=config.out + "-2")).train_loader.labels) == 1437


def test_correct_npz_records_which_images_the_final_and_best_epochs_got_right(tiny_config):
    config = tiny_config(epochs=3)
    result = train(config)
    run = RunDirectory(config.out)
    metrics, correct = run.read_metrics(), run.read_correctness()
    best_row = next(row for row in metrics if row["epoch"] == result.best_epoch)
    assert (correct["final_epoch"], correct["best_epoch"]) == (3, result.best_epoch)
    assert len(correct["final_test"]) == 360 and len(correct["final_val"]) == 144
    assert correct["final_test"].double().mean().item() == pytest.approx(metrics[-1]["test_acc"])
    assert correct["final_val"].double().mean().item() == pytest.approx(metrics[-1]["val_acc"])
    assert correct["best_test"].double().mean().item() == pytest.approx(best_row["test_acc"])
    assert run.correctness_path.stat().st_size < 4_000  # one bit per image (252 bytes here); the rest is zip headers


def test_plateau_watches_val_loss_by_default_and_monitor_still_chooses(tiny_config, monkeypatch):
    seen = []
    original = torch.optim.lr_scheduler.ReduceLROnPlateau.step
    monkeypatch.setattr(torch.optim.lr_scheduler.ReduceLROnPlateau, "step",
                        lambda self, metric: (seen.append(metric), original(self, metric))[1])
    trainer = Trainer(tiny_config(schedule="plateau:patience=0", epochs=2))
    trainer.fit()
    metrics = RunDirectory(trainer.config.out).read_metrics()
    assert seen == pytest.approx([row["val_loss"] for row in metrics])
    assert trainer.schedule.spec.monitor == "val_loss"
    assert Trainer(tiny_config(schedule="plateau:monitor=test_acc", out=trainer.config.out + "-2")).schedule.spec.monitor == "test_acc"


def test_plateau_on_validation_without_a_split_is_refused_with_the_fix(tiny_config):
    with pytest.raises(UsageError, match="add monitor=test_loss"):
        tiny_config(schedule="plateau:patience=2", val_fraction=0).validate()


def test_every_run_validates_on_the_same_images_whatever_its_seed(tiny_config, tmp_path):
    first = Trainer(tiny_config(seed=0, out=str(tmp_path / "a"))).evaluation_loaders["val"]
    second = Trainer(tiny_config(seed=5, out=str(tmp_path / "b"))).evaluation_loaders["val"]
    assert torch.equal(first.images, second.images) and len(first.labels) == 144


def test_resuming_a_run_made_before_validation_splits_is_refused_clearly(tiny_config):
    config = tiny_config()
    train(config)
    run = RunDirectory(config.out)
    rows = run.read_metrics()
    old_columns = [c for c in METRIC_COLUMNS if not c.startswith("val_")]
    run.metrics_path.write_text(",".join(old_columns) + "\n" + "".join(
        ",".join(str(row[c]) for c in old_columns) + "\n" for row in rows[:2]))
    before = run.metrics_path.read_text()
    with pytest.raises(UsageError, match="without a validation split .* --overwrite"):
        train(config, resume=True)
    assert run.metrics_path.read_text() == before


def test_config_yaml_repeats_the_run_and_records_versions(tiny_config):
    config = tiny_config()
    train(config)
    saved_text = (Path(config.out) / "config.yaml").read_text()
    assert "torch: " in saved_text and "torchvision: " in saved_text and "lrlab: " in saved_text
    assert "val_fraction: 0.1" in saved_text and "split_seed: 0" in saved_text
    assert load_config(Path(config.out) / "config.yaml") == config


def test_every_schedule_with_one_seed_starts_from_the_same_weights(tiny_config, tmp_path):
    weights = []
    for schedule in ("constant", "cosine:T_max=3", "onecycle:max_lr=0.1"):
        trainer = Trainer(tiny_config(schedule=schedule, out=str(tmp_path / schedule)))
        weights.append(torch.cat([p.detach().flatten() for p in trainer.model.parameters()]))
    assert torch.equal(weights[0], weights[1]) and torch.equal(weights[0], weights[2])


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


@pytest.mark.parametrize("device", DEVICES)
def test_schedule_free_optimizer_is_evaluated_with_its_averaged_weights(tiny_config, device):
    config = tiny_config(optimizer="adamw-schedulefree:lr=0.01", epochs=3, device=device)
    trainer = Trainer(config)
    result = trainer.fit()
    run = RunDirectory(config.out)
    assert result.state == "finished" and result.final_test_acc > 0.5
    best = torch.load(run.best_path, weights_only=True)
    last = torch.load(run.last_path, weights_only=True)
    # best.pt keeps what was evaluated (the average x); last.pt the training point y, to resume from.
    assert all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(trainer.model.state_dict().values(), last["model"].values()))
    assert trainer.optimizer.param_groups[0]["train_mode"] is True
    trainer.model.load_state_dict(best["model"])
    for split, loader in trainer.evaluation_loaders.items():  # evaluated as the run evaluates (bf16 autocast)
        assert evaluate(loader, PlainStep(trainer.model, trainer.optimizer, trainer.loss_fn, trainer.autocast))[1] == [best[f"{split}_acc"]]
    assert best["test_acc"] == result.best_test_acc
    assert any(not torch.equal(a.cpu(), b.cpu()) for a, b in zip(best["model"].values(), last["model"].values()))


def test_schedule_free_evaluation_recomputes_batchnorm_statistics_at_the_averaged_weights(tiny_config):
    trainer = Trainer(tiny_config(optimizer="adamw-schedulefree:lr=0.01", precision="fp32", epochs=1))
    trainer.fit()
    step = trainer.plain_step()
    with step.evaluation_point(trainer.train_loader) as [evaluated]:
        corrected_loss, _, _ = evaluate(trainer.test_loader, step)
    set_training_mode(trainer.optimizer, False)  # the averaged weights with the statistics gathered at y
    uncorrected_loss, _, _ = evaluate(trainer.test_loader, step)
    assert corrected_loss != uncorrected_loss
    conv, batchnorm = trainer.model[0][0], "0.1"
    batches = list(itertools.islice(trainer.train_loader, BATCHNORM_RECOMPUTE_BATCHES))
    with torch.no_grad():
        inputs = [conv(images) for images, _ in batches]
    assert torch.allclose(evaluated[f"{batchnorm}.running_mean"], torch.stack([x.mean((0, 2, 3)) for x in inputs]).mean(0), atol=1e-5)
    assert torch.allclose(evaluated[f"{batchnorm}.running_var"], torch.stack([x.var((0, 2, 3)) for x in inputs]).mean(0), atol=1e-4)


def same_state(a, b) -> bool:
    """Nested state dicts equal bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("optimizer", ["adamw-schedulefree:lr=0.01", "sgd-schedulefree:lr=0.1", "sgd:lr=0.05,momentum=0.9"])
def test_training_is_bit_identical_with_and_without_evaluation(tiny_config, tmp_path, monkeypatch, optimizer):
    evaluated = Trainer(tiny_config(optimizer=optimizer, out=str(tmp_path / "evaluated")))
    evaluated.fit()
    def no_evaluation(loaders, step, *args, **kwargs):
        return [{f"{split}_{figure}": 0.0 for split in loaders for figure in ("loss", "acc")}], [{}]

    @contextlib.contextmanager
    def at_the_training_point(step, batches, ranks=None):
        yield [None]

    monkeypatch.setattr(engine, "evaluate_splits", no_evaluation)
    monkeypatch.setattr(PlainStep, "evaluation_point", at_the_training_point)
    unevaluated = Trainer(tiny_config(optimizer=optimizer, out=str(tmp_path / "unevaluated")))
    unevaluated.fit()
    a, b = RunDirectory(evaluated.config.out), RunDirectory(unevaluated.config.out)
    train_columns = lambda run: [(row["train_loss"], row["train_acc"]) for row in run.read_metrics()]
    assert train_columns(a) == train_columns(b) and a.read_steps() == b.read_steps()
    last = [torch.load(run.last_path, weights_only=True) for run in (a, b)]
    assert same_state(last[0]["model"], last[1]["model"]) and same_state(last[0]["optimizer"], last[1]["optimizer"])
    assert all(torch.equal(x, y) for x, y in zip(evaluated.model.state_dict().values(), unevaluated.model.state_dict().values()))
    assert evaluated.model.training == unevaluated.model.training


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


def test_tensorboard_events_are_written_when_asked(tiny_config):
    pytest.importorskip("tensorboard")
    config = tiny_config(tensorboard=True, epochs=1)
    train(config)
    assert list(Path(config.out).glob("events.out.tfevents.*"))


@pytest.mark.parametrize("model", ["mlp", "convnet", "resnet", "torchvision:resnet18"])
def test_each_model_trains_on_grey_images(tiny_config, model):
    width = None if model.startswith("torchvision") else 4
    config = tiny_config(model=model, width=width, epochs=1, limit_train=128, limit_test=64, image_size=16 if "torchvision" in model else None)
    assert train(config).state == "finished"


@CUDA_ONLY
def test_cuda_run_uses_bf16_and_channels_last_and_learns(tiny_config):
    trainer = Trainer(tiny_config(device="cuda", epochs=2))
    assert trainer.use_bf16 and trainer.channels_last
    assert trainer.fit().final_test_acc > 0.5


def device_waits_in_an_epoch(trainer: Trainer, epoch: int) -> int:
    """How often one training epoch makes the host wait for the GPU (torch's sync debug mode counts)."""
    trainer.train_loader.set_epoch(epoch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_epoch(trainer.train_loader, trainer.plain_step(), [trainer.schedule],
                        first_step=trainer.schedule.step_count, check_every=10**6)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return len([w for w in caught if "synchroniz" in str(w.message)])


@CUDA_ONLY
def test_a_cuda_epoch_waits_for_the_device_only_at_its_end(tiny_config):
    trainer = Trainer(tiny_config(device="cuda", augment="crop", epochs=1))
    assert trainer.train_loader.images.is_cuda and trainer.use_bf16 and trainer.channels_last
    # The epoch's totals and losses are read once, at its end: no wait per step.
    assert device_waits_in_an_epoch(trainer, 1) <= 6 < trainer.steps_per_epoch


@pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_cnn_learns_real_fashion_mnist_on_a_slice(tiny_config):
    # A decaying LR settles the last epoch; seeds 0-2 end at 70-72% here. Chance is 10%.
    config = tiny_config(dataset="fashion-mnist", width=8, epochs=4, limit_train=3000, limit_test=1000,
                         schedule="cosine:T_max=4")
    result = train(config)
    assert result.final_test_acc > 0.6




@pytest.mark.parametrize("optimizer, schedule, expected", [
    ("sgd:lr=0.05,momentum=0.9", "onecycle:max_lr=0.1", "moves"),  # one-cycle cycles SGD's momentum against the LR
    ("adamw:lr=0.01", "onecycle:max_lr=0.01", "moves"),  # and Adam's first beta
    ("sgd:lr=0.05,momentum=0.9", "constant", "fixed"),
    ("adagrad:lr=0.01", "constant", None),  # no momentum: no column
])
def test_steps_csv_logs_the_momentum_a_schedule_sets_when_the_optimizer_has_one(tiny_config, optimizer, schedule, expected):
    config = tiny_config(optimizer=optimizer, schedule=schedule, epochs=2)
    train(config)
    run = RunDirectory(config.out)
    if expected is None:
        assert "momentum" not in run.step_columns()
        return
    momenta = [row["momentum"] for row in run.read_steps()]
    last = torch.load(run.last_path, weights_only=True)["optimizer"]["param_groups"][0]
    assert len(momenta) == len(run.read_steps()) and all(0 < m < 1 for m in momenta)
    assert (len(set(momenta)) > 2) == (expected == "moves")
    # The value logged before the last step is the one that step used; one-cycle then moves it once more.
    final = last.get("momentum", last.get("betas", [None])[0])
    assert momenta[-1] == pytest.approx(final, abs=0.01)


def test_building_a_trainer_locks_writes_and_prints_nothing(tiny_config, tmp_path, capfd):
    # Assembly has no side effects; `train` takes the lock, checks the folder and prints doctor's notes.
    config = tiny_config(schedule="cosine:T_max=30", quiet=False, out=str(tmp_path / "new" / "run"))
    trainer = Trainer(config)
    assert not (tmp_path / "new").exists() and capfd.readouterr().err == ""
    assert any("T_max" in line for line in trainer.notes())  # what doctor says, for the caller to print
    with pytest.raises(UsageError, match="lr=auto needs the range test's pick"):
        Trainer(tiny_config(optimizer="sgd:lr=auto", out=str(tmp_path / "auto")))
    assert train(config).state == "finished"
    assert any(line.startswith("lrlab: note:") and "T_max" in line for line in capfd.readouterr().err.splitlines())


def test_status_json_says_which_epoch_a_running_run_is_on(tiny_config):
    config = tiny_config(epochs=3)
    seen = []
    trainer = Trainer(config, on_epoch=lambda epoch, metrics: seen.append(RunDirectory(config.out).read_status()))
    trainer.fit()
    assert [(s["state"], s["epoch"]) for s in seen] == [("running", 1), ("running", 2), ("running", 3)]
