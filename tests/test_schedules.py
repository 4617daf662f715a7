import pytest
import torch
from torch.optim import lr_scheduler

from lrlab import parse_schedule, train
from lrlab.errors import UsageError
from lrlab.runs import RunDirectory
from lrlab.schedules import (
    COMBINATORS,
    ScheduleDriver,
    scheduler_classes,
)

LR = 0.05
EPOCHS = 6


def torch_alone(make_scheduler, steps, metrics=None):
    """The LR torch's scheduler gives at each of `steps` calls, with no lrlab in between."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=LR, momentum=0.9)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for index in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step(metrics[index]) if metrics is not None else scheduler.step()
    return lrs


def run_lrs(tiny_config, schedule, **overrides):
    config = tiny_config(schedule=schedule, epochs=EPOCHS, optimizer=f"sgd:lr={LR},momentum=0.9", **overrides)
    train(config)
    run = RunDirectory(config.out)
    return run.read_metrics(), run.read_steps()


@pytest.mark.parametrize("spec, make", [
    ("step:step_size=2,gamma=0.5", lambda o: lr_scheduler.StepLR(o, step_size=2, gamma=0.5)),
    ("exponential:gamma=0.8", lambda o: lr_scheduler.ExponentialLR(o, gamma=0.8)),
    ("cosine:T_max=10", lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=10)),
])
def test_epoch_schedule_lr_column_equals_torch_scheduler(tiny_config, spec, make):
    metrics, _ = run_lrs(tiny_config, spec)
    assert [row["lr"] for row in metrics] == torch_alone(make, EPOCHS)


def test_onecycle_lr_of_every_step_equals_torch_scheduler(tiny_config):
    _, steps = run_lrs(tiny_config, "onecycle:max_lr=0.1")
    expected = torch_alone(lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=len(steps)), len(steps))
    assert [row["lr"] for row in steps] == pytest.approx(expected, rel=1e-12, abs=0)
    assert max(row["lr"] for row in steps) == pytest.approx(0.1, rel=1e-3)


def test_plateau_lr_column_equals_torch_scheduler_fed_the_validation_loss(tiny_config):
    # A large threshold makes every epoch count as "no improvement", so the LR must be cut.
    metrics, _ = run_lrs(tiny_config, "plateau:factor=0.5,patience=1,threshold=0.9")
    val_losses = [row["val_loss"] for row in metrics]
    expected = torch_alone(
        lambda o: lr_scheduler.ReduceLROnPlateau(o, mode="min", factor=0.5, patience=1, threshold=0.9), EPOCHS, val_losses
    )
    lrs = [row["lr"] for row in metrics]
    assert lrs == expected
    assert lrs[-1] < lrs[0]


def test_plateau_can_monitor_test_accuracy_and_then_maximises(tiny_config):
    spec = parse_schedule("plateau:monitor=test_acc,patience=0")
    assert spec.arguments["mode"] == "max"


def test_warmup_in_front_of_plateau_ramps_up_then_reduces_on_plateau():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    driver = ScheduleDriver("warmup(linear,epochs=1,start_factor=0.1)+plateau:factor=0.5,patience=0", optimizer, 5, 5)
    lrs = []
    for epoch in range(5):
        for _ in range(5):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            driver.after_step()
        driver.after_epoch({"val_loss": 1.0})  # a flat loss: every epoch after the first is a plateau
    warmup, after = lrs[:5], lrs[5:]
    assert warmup == sorted(warmup) and warmup[0] == pytest.approx(0.01) and warmup[-1] < 0.1
    assert after[:5] == [0.1] * 5  # warmup hands over exactly the LR the schedule starts from
    # The first epoch after warmup sets the plateau's baseline; each flat epoch after it halves the LR.
    assert after[5:10] == [0.1] * 5 and after[10:15] == [0.05] * 5 and after[15:] == [0.025] * 5


def test_warmup_then_plateau_in_a_real_run_does_both(tiny_config):
    metrics, steps = run_lrs(tiny_config, "warmup(linear,epochs=1)+plateau:factor=0.5,patience=0,threshold=0.9")
    first_epoch = [row["lr"] for row in steps if row["epoch"] == 1]
    assert first_epoch == sorted(first_epoch) and first_epoch[0] < first_epoch[-1] < LR
    assert metrics[1]["lr"] == LR
    assert metrics[-1]["lr"] < LR


def test_warmup_then_cosine_hands_over_to_cosine_from_its_start(tiny_config):
    metrics, _ = run_lrs(tiny_config, "warmup(linear,epochs=2)+cosine:T_max=4")
    cosine = torch_alone(lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=4), EPOCHS - 2)
    assert [row["lr"] for row in metrics][2:] == pytest.approx(cosine, rel=1e-12)


def test_step_suffix_makes_an_epoch_schedule_step_every_batch(tiny_config):
    _, steps = run_lrs(tiny_config, "exponential:gamma=0.9@step")
    first_epoch = [row["lr"] for row in steps if row["epoch"] == 1]
    assert len(set(first_epoch)) == len(first_epoch) > 1
    assert first_epoch[1] == pytest.approx(LR * 0.9)


def test_epoch_suffix_makes_onecycle_step_once_per_epoch(tiny_config):
    metrics, steps = run_lrs(tiny_config, "onecycle:max_lr=0.1@epoch")
    first_epoch = {row["lr"] for row in steps if row["epoch"] == 1}
    assert len(first_epoch) == 1
    expected = torch_alone(lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=EPOCHS), EPOCHS)
    assert [row["lr"] for row in metrics] == pytest.approx(expected, rel=1e-12)


def test_constant_keeps_the_lr_fixed(tiny_config):
    _, steps = run_lrs(tiny_config, "constant")
    assert {row["lr"] for row in steps} == {LR}


def minimal_arguments(class_name):
    return {
        "StepLR": "step_size=2", "MultiStepLR": "milestones=[2,4]", "ExponentialLR": "gamma=0.9",
        "CosineAnnealingLR": "T_max=5", "CosineAnnealingWarmRestarts": "T_0=2", "CyclicLR": "base_lr=0.01,max_lr=0.1",
        "OneCycleLR": "max_lr=0.1", "LambdaLR": "lr_lambda=0.9**epoch", "MultiplicativeLR": "lr_lambda=0.95",
    }.get(class_name, "")


@pytest.mark.parametrize("class_name", sorted(set(scheduler_classes()) - COMBINATORS))
def test_every_torch_scheduler_is_reachable_by_class_name_and_steps(class_name):
    spec = parse_schedule(f"{class_name}:{minimal_arguments(class_name)}".rstrip(":"))
    assert spec.class_name == class_name
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.1, momentum=0.9)
    driver = ScheduleDriver(spec, optimizer, epochs=3, steps_per_epoch=4)
    for _ in range(3):
        for _ in range(4):
            optimizer.step()
            driver.after_step()
        driver.after_epoch({"val_loss": 1.0})
    assert type(driver.main).__name__ == class_name


@pytest.mark.parametrize("short, class_name", [("step", "StepLR"), ("cosine", "CosineAnnealingLR"), ("plateau", "ReduceLROnPlateau"),
                                               ("onecycle", "OneCycleLR"), ("exponential", "ExponentialLR"), ("StepLR", "StepLR"), ("steplr", "StepLR")])
def test_short_and_class_names_resolve_to_the_same_class(short, class_name):
    spec = parse_schedule(f"{short}:{minimal_arguments(class_name)}".rstrip(":"))
    assert spec.class_name == class_name


def test_lambda_schedule_survives_a_state_dict_round_trip():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    driver = ScheduleDriver("lambda:lr_lambda=0.5**epoch", optimizer, 5, 1)
    driver.after_epoch({})
    assert optimizer.param_groups[0]["lr"] == 0.5
    state = driver.state_dict()
    again = ScheduleDriver("lambda:lr_lambda=0.5**epoch", torch.optim.SGD([parameter], lr=1.0), 5, 1)
    again.load_state_dict(state)
    assert again.main.last_epoch == 1


@pytest.mark.parametrize("bad, says", [
    ("step:gama=0.5", "did you mean 'gamma'"),
    ("step:step_size=x", "step_size='x' should be int"),
    ("stpe:step_size=2", "did you mean 'step'"),
    ("step", "missing required argument step_size"),
    ("plateau:mode=min,monitor=test_acc", "use mode=max"),
    ("plateau:patience=2@step", "cannot step per batch"),
    ("plateau:monitor=valid_loss", "monitor='valid_loss' should be one of"),
    ("cosine:T_max=5,monitor=test_loss", "only applies to plateau"),
    ("SequentialLR", "combines other schedules"),
    ("warmup(cubic,epochs=1)+step:step_size=2", "warmup kind 'cubic'"),
    ("warmup(linear)+step:step_size=2", "exactly one of epochs"),
    ("warmup(linear,epochs=1)step:step_size=2", "warmup(linear,epochs=2)+<schedule>"),
    ("lambda:lr_lambda=__import__('os')", "unknown name"),
    ("multistep:milestones=[2,4", "unbalanced brackets"),
    ("constant:gamma=2", "takes no arguments"),
    ("step:step_size=2,step_size=3", "given twice"),
    ("", "empty schedule spec"),
])
def test_malformed_schedule_specs_say_what_is_wrong(bad, says):
    with pytest.raises(UsageError, match=None) as error:
        parse_schedule(bad)
    assert says in str(error.value)
