"""The capturable training step: ForeachSGD against torch's SGD, and the graphed step's routing.

The CUDA graph itself needs a GPU; on the CPU the two CUDA calls (`on_side_stream`, `capture`)
are replaced by plain calls, which checks everything around them: the warm-up, the static
tensors, the LR refilled before each replay, the last smaller batch trained eagerly.
"""

import copy

import pytest
import torch
from torch import nn

from lrlab import Trainer, train
from lrlab import steps as steps_module
from lrlab.data import BatchLoader
from lrlab.engine import Diverged, train_one_epoch
from lrlab.errors import UsageError
from lrlab.foreach_sgd import ForeachSGD
from lrlab.runs import RunDirectory
from lrlab.schedules import ScheduleDriver, parse_schedule
from lrlab.steps import GraphedStep

CUDA_ONLY = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; the CUDA path is checked where one exists")


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def batches(count: int, seed: int = 1, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 1, 8, 8, generator=generator), torch.randint(0, 10, (size,), generator=generator))
            for _ in range(count)]


@pytest.mark.parametrize("arguments", [
    {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
    {"lr": 0.05, "momentum": 0.9, "nesterov": True},
    {"lr": 0.05, "momentum": 0.5, "dampening": 0.2},
    {"lr": 0.2},
])
def test_foreach_sgd_follows_torch_sgd_step_for_step_under_a_schedule(arguments):
    ours, theirs = small_model(), small_model()
    optimizers = [ForeachSGD(ours.parameters(), **arguments), torch.optim.SGD(theirs.parameters(), **arguments)]
    schedules = [torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.3, total_steps=30) for optimizer in optimizers]
    for images, labels in batches(25):
        lrs = []
        for model, optimizer, schedule in zip((ours, theirs), optimizers, schedules):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images), labels).backward()
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        assert lrs[0] == lrs[1]
        for a, b in zip(ours.parameters(), theirs.parameters()):
            # The LR multiplies as a tensor instead of a fused alpha: one more rounding per step.
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    if arguments.get("momentum"):
        assert optimizers[0].state_dict()["state"].keys() == optimizers[1].state_dict()["state"].keys()


def test_foreach_sgd_checkpoints_are_interchangeable_with_torch_sgd_and_resume_exactly():
    data = batches(10)
    uninterrupted = small_model()
    optimizer = ForeachSGD(uninterrupted.parameters(), lr=0.1, momentum=0.9)
    for images, labels in data:
        optimizer.zero_grad()
        nn.functional.cross_entropy(uninterrupted(images), labels).backward()
        optimizer.step()

    first_half = small_model()
    torch_sgd = torch.optim.SGD(first_half.parameters(), lr=0.1, momentum=0.9)
    ours = ForeachSGD(first_half.parameters(), lr=0.1, momentum=0.9)
    for images, labels in data[:5]:
        ours.zero_grad()
        nn.functional.cross_entropy(first_half(images), labels).backward()
        ours.step()
    saved = copy.deepcopy(ours.state_dict())
    torch_sgd.load_state_dict(saved)  # torch's SGD reads our checkpoint ...
    resumed = ForeachSGD(first_half.parameters(), lr=0.1, momentum=0.9)
    resumed.load_state_dict(torch_sgd.state_dict())  # ... and we read torch's
    for images, labels in data[5:]:
        resumed.zero_grad()
        nn.functional.cross_entropy(first_half(images), labels).backward()
        resumed.step()
    assert all(torch.equal(a, b) for a, b in zip(uninterrupted.parameters(), first_half.parameters()))


def test_foreach_sgd_update_needs_the_lr_loaded_first():
    optimizer = ForeachSGD(small_model().parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="load_lr"):
        optimizer.update()


class CountingCalls:
    """Stands in for the CUDA calls on the CPU: the side stream runs in line, the 'graph' replays its body."""

    def __init__(self, monkeypatch):
        self.side_stream_steps = self.captures = 0
        monkeypatch.setattr(steps_module, "on_side_stream", self.on_side_stream)
        monkeypatch.setattr(steps_module, "capture", self.capture)

    def on_side_stream(self, run):
        self.side_stream_steps += 1
        return run()

    def capture(self, body):
        self.captures += 1
        return body


def epoch_setup(images: torch.Tensor, labels: torch.Tensor, schedule: str = "onecycle:max_lr=0.2", lr: float = 0.05):
    model = small_model()
    optimizer = ForeachSGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    loader = BatchLoader(images, labels, 32, [0.5], [0.25], shuffle=True, seed=3)
    driver = ScheduleDriver(parse_schedule(schedule), optimizer, epochs=2, steps_per_epoch=len(loader))
    return model, optimizer, loader, driver


def test_graphed_step_warms_up_captures_once_and_trains_the_last_batch_eagerly(monkeypatch):
    calls = CountingCalls(monkeypatch)
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.randint(0, 256, (7 * 32 + 20, 1, 8, 8), generator=generator, dtype=torch.uint8), torch.randint(0, 10, (244,), generator=generator)
    results = []
    for graphed in (False, True):
        model, optimizer, loader, driver = epoch_setup(images, labels)
        step = GraphedStep(model, nn.CrossEntropyLoss(), optimizer) if graphed else None
        history = []
        for epoch in (1, 2):
            loader.set_epoch(epoch)
            history.append(train_one_epoch(loader, model, nn.CrossEntropyLoss(), optimizer, driver,
                                           first_step=driver.step_count, graphed=step))
        results.append((history, [p.detach().clone() for p in model.parameters()]))
    (eager_history, eager_weights), (graphed_history, graphed_weights) = results
    # Same optimizer, same arithmetic: the graphed route changes nothing that is computed, LR sequence included.
    assert graphed_history == eager_history and eager_history[0][2] != eager_history[1][2]
    assert all(torch.equal(a, b) for a, b in zip(eager_weights, graphed_weights))
    assert calls.side_stream_steps == GraphedStep.WARMUP_STEPS and calls.captures == 1


def test_a_graphed_step_reports_the_exact_step_a_loss_became_nan(monkeypatch):
    CountingCalls(monkeypatch)
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.randint(0, 256, (320, 1, 8, 8), generator=generator, dtype=torch.uint8), torch.randint(0, 10, (320,), generator=generator)
    model, optimizer, loader, driver = epoch_setup(images, labels, schedule="constant")
    loader.set_epoch(1)
    step = GraphedStep(model, nn.CrossEntropyLoss(), optimizer)
    original = step._step_on_static_tensors
    calls = []

    def poisoned_at_the_seventh_step():
        calls.append(1)
        if len(calls) == 7 - GraphedStep.WARMUP_STEPS:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        original()

    step._step_on_static_tensors = poisoned_at_the_seventh_step
    with pytest.raises(Diverged) as diverged:
        train_one_epoch(loader, model, nn.CrossEntropyLoss(), optimizer, driver, first_step=100, check_every=4, graphed=step)
    assert diverged.value.step == 107


def test_graph_capture_is_off_on_the_cpu_and_refused_when_asked_for_there(tiny_config):
    trainer = Trainer(tiny_config())
    assert trainer.graphed_step is None and type(trainer.optimizer) is torch.optim.SGD
    with pytest.raises(UsageError, match="--graph-capture on: it needs CUDA and this run is on cpu"):
        Trainer(tiny_config(graph_capture="on"))


@CUDA_ONLY
def test_graph_capture_on_cuda_keeps_the_lr_sequence_and_learns(tiny_config, tmp_path):
    runs = {}
    for setting in ("on", "off"):
        config = tiny_config(device="cuda", graph_capture=setting, schedule="onecycle:max_lr=0.1", out=str(tmp_path / setting))
        trainer = Trainer(config)
        assert (trainer.graphed_step is not None) == (setting == "on")
        assert trainer.fit().final_test_acc > 0.5
        runs[setting] = RunDirectory(config.out).read_steps()
    assert [row["lr"] for row in runs["on"]] == [row["lr"] for row in runs["off"]]
    assert runs["on"][0]["loss"] == pytest.approx(runs["off"][0]["loss"], rel=1e-3)  # same weights, same first batch


@CUDA_ONLY
def test_a_captured_run_resumes_to_the_uninterrupted_run(tiny_config, tmp_path):
    from helpers import without_timing

    whole = tiny_config(device="cuda", graph_capture="on", deterministic=True, out=str(tmp_path / "whole"))
    train(whole)
    train(tiny_config(device="cuda", graph_capture="on", deterministic=True, epochs=1, out=str(tmp_path / "split")))
    train(tiny_config(device="cuda", graph_capture="on", deterministic=True, out=str(tmp_path / "split")), resume=True)
    assert without_timing(RunDirectory(tmp_path / "split").read_metrics()) == without_timing(RunDirectory(whole.out).read_metrics())
    assert RunDirectory(tmp_path / "split").read_steps() == RunDirectory(whole.out).read_steps()
