"""A group of runs trained in one pass gives each run the files, LRs and numbers it would have alone."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from lrlab.engine import Trainer, train
from lrlab.group import group_key, train_group
from lrlab.runs import RunDirectory
from lrlab.stacked import StackedModel

# fp32, a handful of steps: the stacked kernels (grouped convolutions, reductions in another order)
# round differently from one model's in the last bits; a few steps' drift stays well inside this.
LOSS_TOLERANCE = 1e-4

SCHEDULES = {
    "per-epoch": "step:step_size=1,gamma=0.5",
    "exponential": "exponential:gamma=0.9",
    "per-step": "cosine:T_max=12@step",
    "warmup": "warmup(linear,steps=5)+cosine:T_max=2",
    "one-cycle": "onecycle:max_lr=0.1",
    "plateau": "plateau:factor=0.5,patience=0,monitor=train_loss",
    "warmup+plateau": "warmup(constant,steps=3,start_factor=0.5)+plateau:patience=0,monitor=train_loss",
    "fixed": "constant",
}


@pytest.fixture
def small(tiny_config, tmp_path):
    def make(name, **overrides):
        values = {"limit_train": 256, "limit_test": 128, "epochs": 3, "precision": "fp32",
                  "out": str(tmp_path / name), **overrides}
        return tiny_config(**values)

    return make


def lrs(path):
    return [row["lr"] for row in RunDirectory(path).read_steps()], [row["lr"] for row in RunDirectory(path).read_metrics()]


def assert_same_numbers(path, expected_path, tolerance=LOSS_TOLERANCE, epochs=None):
    got, expected = RunDirectory(path).read_metrics(), RunDirectory(expected_path).read_metrics()
    assert len(got) == len(expected)
    for row, expected_row in list(zip(got, expected))[:epochs]:
        for column in ("train_loss", "test_loss"):
            assert row[column] == pytest.approx(expected_row[column], abs=tolerance), (column, row["epoch"])
        assert row["lr"] == expected_row["lr"]
    steps, expected_steps = RunDirectory(path).read_steps(), RunDirectory(expected_path).read_steps()
    for row, expected_row in list(zip(steps, expected_steps))[:8]:
        assert row["loss"] == pytest.approx(expected_row["loss"], abs=tolerance)


def test_lr_columns_are_those_of_runs_trained_alone_for_every_schedule_family(small):
    configs = [small(f"group/{name}", schedule=spec) for name, spec in SCHEDULES.items()]
    results = train_group(configs)
    assert [r.state for r in results] == ["finished"] * len(configs)
    for name, config in zip(SCHEDULES, configs):
        alone = small(f"alone/{name}", schedule=config.schedule)
        train(alone)
        assert lrs(config.out) == lrs(alone.out), name  # bit for bit: the same torch scheduler, stepped alike
        assert_same_numbers(config.out, alone.out, epochs=1)
        for file in ("config.yaml", "metrics.csv", "steps.csv", "status.json", "best.pt", "last.pt", "correct.npz"):
            assert (RunDirectory(config.out).path / file).exists(), file
        group_rows, alone_rows = RunDirectory(config.out).read_metrics(), RunDirectory(alone.out).read_metrics()
        assert group_rows[0].keys() == alone_rows[0].keys() and "val_acc" in group_rows[0]
        assert group_rows[0]["val_loss"] == pytest.approx(alone_rows[0]["val_loss"], abs=LOSS_TOLERANCE)
        group_correct, alone_correct = RunDirectory(config.out).read_correctness(), RunDirectory(alone.out).read_correctness()
        assert group_correct.keys() == alone_correct.keys()
        assert group_correct["final_test"].shape == alone_correct["final_test"].shape
        group_last = RunDirectory(config.out).load_checkpoint(RunDirectory(config.out).last_path)
        alone_last = RunDirectory(alone.out).load_checkpoint(RunDirectory(alone.out).last_path)
        # One-cycle's momentum, the LR and everything else torch keeps per param group, as alone.
        assert group_last["optimizer"]["param_groups"] == alone_last["optimizer"]["param_groups"], name
        assert group_last["schedule"]["step_count"] == alone_last["schedule"]["step_count"]
    momentum = RunDirectory(configs[4].out).load_checkpoint(RunDirectory(configs[4].out).last_path)
    assert momentum["optimizer"]["param_groups"][0]["momentum"] != 0.9  # one-cycle moved it


def test_a_diverging_arm_ends_alone_and_leaves_the_others_numbers_unchanged(small):
    steady = small("with/steady", optimizer="sgd:lr=0.05,momentum=0.9")
    # Its LR grows 1e10-fold every step (LRs above 1e6 are refused as input), so its loss overflows within a few steps.
    exploding = small("with/exploding", optimizer="sgd:lr=0.05,momentum=0.9", schedule="exponential:gamma=1e10@step")
    results = train_group([steady, exploding])
    assert [r.state for r in results] == ["finished", "diverged"]
    status = RunDirectory(exploding.out).read_status()
    assert status["state"] == "diverged" and status["step"] <= 4
    assert RunDirectory(exploding.out).read_metrics() == []
    alone = small("without/steady", optimizer="sgd:lr=0.05,momentum=0.9")
    train_group([alone])
    assert_same_numbers(steady.out, alone.out, tolerance=1e-5)


def interrupt_after(epoch_to_stop):
    def on_epoch(epoch, metrics):
        if epoch == epoch_to_stop:
            raise KeyboardInterrupt

    return on_epoch


def test_a_group_stopped_part_way_resumes_to_the_uninterrupted_group(small):
    specs = ["step:step_size=1,gamma=0.5", "onecycle:max_lr=0.1", "constant"]
    whole = [small(f"whole/{i}", schedule=spec) for i, spec in enumerate(specs)]
    train_group(whole)
    stopped = [small(f"stopped/{i}", schedule=spec) for i, spec in enumerate(specs)]
    # The first arm records epoch 1 and the stop comes before the others do: the runs are left at
    # different epochs, as a kill during the end-of-epoch writes would leave them.
    with pytest.raises(KeyboardInterrupt):
        train_group(stopped, on_epoch=[interrupt_after(1), None, None])
    assert [len(RunDirectory(c.out).read_metrics()) for c in stopped] == [1, 0, 0]
    assert {RunDirectory(c.out).read_status()["state"] for c in stopped} == {"interrupted"}
    train_group(stopped)
    for config, expected in zip(stopped, whole):
        assert RunDirectory(config.out).read_status()["state"] == "finished"
        assert lrs(config.out) == lrs(expected.out)
        assert_same_numbers(config.out, expected.out)


def test_runs_started_in_a_group_finish_alone_and_the_other_way_round(small):
    batched_first = small("batched-first", schedule="onecycle:max_lr=0.1")
    with pytest.raises(KeyboardInterrupt):
        train_group([batched_first, small("other", schedule="constant")], on_epoch=[interrupt_after(1), None])
    train(batched_first, resume=True)
    alone_first = small("alone-first", schedule="onecycle:max_lr=0.1")
    with pytest.raises(KeyboardInterrupt):
        Trainer(alone_first, on_epoch=interrupt_after(1)).fit()
    train_group([alone_first])
    reference = small("reference", schedule="onecycle:max_lr=0.1")
    train(reference)
    for config in (batched_first, alone_first):
        assert RunDirectory(config.out).read_status()["state"] == "finished"
        assert lrs(config.out) == lrs(reference.out)
        assert_same_numbers(config.out, reference.out)


def test_bf16_autocast_trains_a_group(small):
    configs = [small(f"bf16/{i}", schedule=spec, precision="bf16") for i, spec in enumerate(["constant", "onecycle:max_lr=0.1"])]
    results = train_group(configs)
    assert [r.state for r in results] == ["finished", "finished"]
    assert all(0 < row["train_loss"] < 10 for c in configs for row in RunDirectory(c.out).read_metrics())


def test_only_runs_that_can_share_their_batches_share_a_group(small):
    base = small("a")
    assert group_key(base) == group_key(replace(base, schedule="onecycle:max_lr=0.1", optimizer="sgd:lr=0.2,momentum=0.8", out="b"))
    assert group_key(base) != group_key(replace(base, seed=1))
    assert group_key(base) != group_key(replace(base, batch_size=32))
    assert group_key(base) != group_key(replace(base, optimizer="adamw:lr=0.01"))
    assert group_key(replace(base, optimizer="rmsprop:lr=0.01")) is None


class TwoBranchNet(nn.Module):
    """Not a built-in: BatchNorm1d, dropout, a skip connection and a parameter used twice."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.norm = nn.BatchNorm1d(16)
        self.drop = nn.Dropout(0.0)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        hidden = torch.relu(self.norm(self.embed(x)))
        return self.head(self.drop(hidden) + hidden)


def test_a_user_defined_module_trains_stacked_like_separate_copies():
    torch.manual_seed(0)
    models = [TwoBranchNet() for _ in range(3)]
    loss_fn = nn.CrossEntropyLoss()
    stacked = StackedModel(models, loss_fn)
    images, labels = torch.randn(32, 8), torch.randint(0, 3, (32,))
    losses, logits = stacked.losses_and_logits(images, labels)
    losses.sum().backward()
    for arm, model in enumerate(models):
        model.train()
        expected = loss_fn(model(images), labels)
        expected.backward()
        torch.testing.assert_close(losses[arm], expected)
        for name, parameter in model.named_parameters():
            torch.testing.assert_close(stacked.parameters[name].grad[arm], parameter.grad, rtol=1e-5, atol=1e-6)
        # BatchNorm's running statistics were updated in place, for each arm from its own activations.
        torch.testing.assert_close(stacked.buffers["norm.running_mean"][arm], model.norm.running_mean)
        assert int(stacked.buffers["norm.num_batches_tracked"][arm]) == 1
    assert not torch.equal(stacked.buffers["norm.running_mean"][0], stacked.buffers["norm.running_mean"][1])


def test_a_comparison_plans_passes_of_one_seed_and_says_how(small, capsys):
    from lrlab.grid import plan_passes
    from lrlab.executors import GridTask

    base = small("plan")
    schedules = ["constant", "step:step_size=1", "cosine:T_max=3", "onecycle:max_lr=0.1", "exponential:gamma=0.9"]
    tasks = [GridTask(spec, seed, replace(base, schedule=spec, seed=seed, out=f"{base.out}/{spec}/{seed}"))
             for spec in schedules for seed in (0, 1)]
    tasks.append(GridTask("rmsprop", 0, replace(base, optimizer="rmsprop:lr=0.01", out=f"{base.out}/rmsprop")))
    passes, lines = plan_passes(tasks, 3, base, data=None)
    assert sorted(len(members) for members in passes) == [1, 2, 2, 3, 3]
    assert all(len({task.seed for task in members}) == 1 for members in passes)
    assert [members for members in passes if any(task.label == "rmsprop" for task in members)] == [[tasks[-1]]]
    assert "11 runs in 5 passes" in lines[0] and "10 of them share a pass" in lines[0]
    assert len(lines) == 2 and "rmsprop" in lines[1] and "one run at a time" in lines[1]
    passes, lines = plan_passes(tasks, 1, base, data=None)
    assert len(passes) == len(tasks) and lines == ["lrlab: 11 runs, one at a time (asked for)"]


@pytest.mark.parametrize("alone_seconds, group_seconds, grouped", [(1.0, 6.0, False), (1.0, 2.0, True)])
def test_auto_groups_runs_as_it_measured_on_this_device_and_says_the_ratio(small, monkeypatch, alone_seconds, group_seconds,
                                                                           grouped):
    # On this CPU a group measures slower per run than its runs alone (benchmarks/README.md); auto says so from
    # what it timed, not from a table, so the other outcome is stood in by the timings.
    from lrlab import group
    from lrlab.data import load_dataset
    from lrlab.executors import GridTask
    from lrlab.grid import plan_passes

    timings = iter([alone_seconds, group_seconds])
    monkeypatch.setattr(group, "_seconds_per_step", lambda step, device: (step(), next(timings))[1])
    base = small("auto", device="cpu")
    tasks = [GridTask(spec, 0, replace(base, schedule=spec, out=f"{base.out}/{spec}"))
             for spec in ["constant", "step:step_size=1", "exponential:gamma=0.9"]]
    passes, lines = plan_passes(tasks, "auto", base, data=load_dataset("digits"))
    ratio = alone_seconds / (group_seconds / 3)
    measured = f"auto: 3 runs grouped measured {ratio:.2f}x as fast per run as one alone on cpu (5 steps each way)"
    if grouped:
        assert passes == [tasks]
        assert lines == [f"lrlab: 3 runs in 1 pass over the data; 3 of them share a pass with other runs of their seed "
                         f"(up to 3 a pass, {measured})"]
    else:
        assert passes == [[task] for task in tasks]
        assert lines == [f"lrlab: 3 runs, one at a time ({measured}, under the 1.25x a group must gain, so one at a time); "
                         f"--workers N spreads runs over the cores"]


def test_auto_measures_no_group_where_no_two_runs_could_share_a_pass(small, monkeypatch):
    from lrlab import group
    from lrlab.data import load_dataset

    monkeypatch.setattr(group, "measure_grouping", lambda *arguments: pytest.fail("measured for one run"))
    choice = group.choose_runs_per_pass(small("one", device="cpu"), load_dataset("digits"), could_share=1)
    assert choice.runs == 1 and "no two runs" in choice.why


@pytest.mark.parametrize("alone_seconds, group_seconds, expected_runs, ratio",
                         [(1.0, 2.0, 3, "1.50x"), (1.0, 2.6, 1, "1.15x"), (1.0, 6.0, 1, "0.50x")])
def test_auto_keeps_what_it_measured_faster_per_run_and_says_the_ratio(small, monkeypatch, alone_seconds, group_seconds,
                                                                        expected_runs, ratio):
    from lrlab import group
    from lrlab.data import load_dataset

    timings = iter([alone_seconds, group_seconds])
    monkeypatch.setattr(group, "_seconds_per_step", lambda step, device: (step(), next(timings))[1])
    choice = group.measure_grouping(small("measured"), load_dataset("digits"), torch.device("cpu"), 3)
    assert choice.runs == expected_runs and f"3 runs grouped measured {ratio} as fast per run as one alone" in choice.why
    assert ("one at a time" in choice.why) == (expected_runs == 1)


def test_auto_trains_alone_when_the_grouped_step_fails_on_the_device(small, monkeypatch):
    # As a vmapped bf16 BatchNorm's backward once did on CUDA.
    from lrlab import group
    from lrlab.data import load_dataset

    def failing(*arguments):
        raise RuntimeError("Expected running_mean to have type BFloat16 but got Float")

    monkeypatch.setattr(group, "StackedStep", failing)
    choice = group.measure_grouping(small("failing"), load_dataset("digits"), torch.device("cpu"), 4)
    assert choice.runs == 1 and "a grouped step failed on cpu (RuntimeError: Expected running_mean" in choice.why


def test_measuring_leaves_the_global_rng_as_it_was(small):
    from lrlab import group
    from lrlab.data import load_dataset

    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    choice = group.measure_grouping(small("rng"), load_dataset("digits"), torch.device("cpu"), 2)
    assert choice.runs in (1, 2) and torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("text", ["0", "-2", "two", "1.5"])
def test_runs_per_pass_must_be_auto_or_a_positive_whole_number(text):
    from lrlab.grid import parse_runs_per_pass
    from lrlab.errors import UsageError

    with pytest.raises(UsageError, match="--runs-per-pass"):
        parse_runs_per_pass(text)
    assert parse_runs_per_pass("auto") == "auto" and parse_runs_per_pass("4") == 4


def test_a_bad_runs_per_pass_is_one_line_and_exit_2_before_anything_is_written(tmp_path, capsys):
    from lrlab.cli import main

    out = tmp_path / "cmp"
    assert main(["compare", "--dataset", "digits", "--schedules", "constant", "--seeds", "0", "--runs-per-pass", "zero",
                 "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--runs-per-pass 'zero'" in error[0]
    assert not out.exists() or not any(out.iterdir())
