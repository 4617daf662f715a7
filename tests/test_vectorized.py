"""The vectorized SGD/AdamW: equal to torch's optimizers step for step, with torch's state_dict layout."""

import pytest
import torch

from lrlab.optimizers import build_optimizer, parse_optimizer
from lrlab.schedules import ScheduleDriver, parse_schedule
from lrlab.vectorized import ArmOptimizer, VectorOptimizer, vectorizable

# fp32 over 20 steps: the batched kernels multiply by a per-arm tensor where torch passes a Python
# scalar (alpha=), which rounds differently in the last bit; the drift stays orders below this.
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}
STEPS = 20
SHAPES = [(4, 3), (4,), (2, 3, 3, 3)]

ARMS = {
    "sgd": [("sgd:lr=0.1,momentum=0.9,weight_decay=5e-4", "step:step_size=3,gamma=0.5"),
            ("sgd:lr=0.05,momentum=0.9,nesterov=True,weight_decay=1e-3", "constant"),  # nesterov group below
            ("sgd:lr=0.2,momentum=0.8", "onecycle:max_lr=0.3"),
            ("sgd:lr=0.1", "warmup(linear,steps=5)+cosine:T_max=4")],
    "adamw": [("adamw:lr=0.01", "exponential:gamma=0.9"),
              ("adamw:lr=0.003,betas=(0.8,0.99),eps=1e-6,weight_decay=0.1", "onecycle:max_lr=0.01"),
              ("adamw:lr=0.001,weight_decay=0", "constant")],
}


def arm_specs(algorithm):
    arms = ARMS[algorithm]
    if algorithm == "sgd":  # Nesterov is a group-wide choice; test each branch in its own group
        return [arms[0], arms[2], arms[3]], [arms[1]]
    return arms, []


def gradient(step, arm, shape):
    generator = torch.Generator().manual_seed(1000 * step + 17 * arm + len(shape))
    return torch.randn(shape, generator=generator)


def start_weights(shape):
    return torch.randn(shape, generator=torch.Generator().manual_seed(len(shape)))


def reference(specs, steps):
    """Each arm alone with torch's optimizer and its own scheduler."""
    results = []
    for arm, (optimizer_text, schedule_text) in enumerate(specs):
        parameters = [torch.nn.Parameter(start_weights(shape)) for shape in SHAPES]
        optimizer = build_optimizer(parse_optimizer(optimizer_text), parameters)
        driver = ScheduleDriver(parse_schedule(schedule_text), optimizer, epochs=4, steps_per_epoch=5)
        results.append((parameters, optimizer, torch_steps(parameters, optimizer, driver, arm, range(steps))))
    return results


def torch_steps(parameters, optimizer, driver, arm, steps):
    """`steps` of torch's optimizer on the arm's drawn gradients, the schedule stepped as Trainer steps it; their LRs."""
    lrs = []
    for step in steps:
        lrs.append(optimizer.param_groups[0]["lr"])
        for parameter, shape in zip(parameters, SHAPES):
            parameter.grad = gradient(step, arm, shape)
        optimizer.step()
        driver.after_step()
        if (step + 1) % 5 == 0:
            driver.after_epoch({"test_loss": 1.0})
    return lrs


def batched(specs, steps, resume_from=None):
    """All arms at once: stacked parameters, one VectorOptimizer, each arm its ArmOptimizer and scheduler;
    `resume_from` gives each arm's (parameters, torch optimizer state, schedule state) to start from."""
    vessels = [[torch.nn.Parameter(start_weights(shape)) for shape in SHAPES] for _ in specs]
    if resume_from is not None:
        vessels = [[torch.nn.Parameter(p.detach().clone()) for p in parameters] for parameters, _, _ in resume_from]
    arms = [ArmOptimizer(parse_optimizer(text), vessel) for (text, _), vessel in zip(specs, vessels)]
    drivers = [ScheduleDriver(parse_schedule(schedule), arm, epochs=4, steps_per_epoch=5) for arm, (_, schedule) in zip(arms, specs)]
    if resume_from is not None:
        for arm, driver, (_, optimizer_state, schedule_state) in zip(arms, drivers, resume_from):
            arm.load_state_dict(optimizer_state)
            driver.load_state_dict(schedule_state)
    stacked = [torch.stack([vessel[i].detach() for vessel in vessels]).requires_grad_() for i in range(len(SHAPES))]
    optimizer = VectorOptimizer(stacked, arms)
    lrs = [[] for _ in specs]
    first = drivers[0].step_count
    for step in range(first, first + steps):
        for arm_index, arm in enumerate(arms):
            lrs[arm_index].append(arm.param_groups[0]["lr"])
        for parameter, shape in zip(stacked, SHAPES):
            parameter.grad = torch.stack([gradient(step, arm, shape) for arm in range(len(specs))])
        optimizer.step()
        for driver in drivers:
            driver.after_step()
        if (step + 1) % 5 == 0:
            for driver in drivers:
                driver.after_epoch({"test_loss": 1.0})
    optimizer.export_state()
    return stacked, arms, drivers, lrs


@pytest.mark.parametrize("algorithm", ["sgd", "adamw"])
def test_vectorized_optimizer_equals_torch_step_for_step(algorithm):
    for specs in arm_specs(algorithm):
        if not specs:
            continue
        expected = reference(specs, STEPS)
        stacked, _, _, lrs = batched(specs, STEPS)
        for arm, (parameters, _, expected_lrs) in enumerate(expected):
            assert lrs[arm] == expected_lrs  # the same torch scheduler, so the same floats
            for parameter, stack in zip(parameters, stacked):
                torch.testing.assert_close(stack[arm].detach(), parameter.detach(), **TOLERANCE)


@pytest.mark.parametrize("algorithm", ["sgd", "adamw"])
def test_arm_state_dict_is_torchs_and_resumes_either_way(algorithm):
    specs = arm_specs(algorithm)[0]
    half = STEPS // 2
    expected = reference(specs, STEPS)
    halfway = reference(specs, half)
    stacked, arms, drivers, _ = batched(specs, half)
    for arm, (parameters, optimizer, _) in zip(arms, halfway):
        exported, torchs = arm.state_dict(), optimizer.state_dict()
        assert exported["param_groups"] == torchs["param_groups"]
        assert exported["state"].keys() == torchs["state"].keys()
        for index, state in torchs["state"].items():
            assert exported["state"][index].keys() == state.keys()
            for key, value in state.items():
                assert exported["state"][index][key].dtype == value.dtype
                torch.testing.assert_close(exported["state"][index][key], value, **TOLERANCE)
    # A torch optimizer's checkpoint continues batched ...
    resumed, _, _, _ = batched(specs, STEPS - half, [(parameters, optimizer.state_dict(), driver.state_dict())
                                                     for (parameters, optimizer, _), driver in zip(halfway, drivers)])
    # ... and a batched arm's checkpoint continues in torch's optimizer.
    for arm_index, ((text, schedule), arm, driver) in enumerate(zip(specs, arms, drivers)):
        parameters = [torch.nn.Parameter(stack[arm_index].detach().clone()) for stack in stacked]
        optimizer = build_optimizer(parse_optimizer(text), parameters)
        torch_driver = ScheduleDriver(parse_schedule(schedule), optimizer, epochs=4, steps_per_epoch=5)
        optimizer.load_state_dict(arm.state_dict())  # in the order Trainer.restore loads them
        torch_driver.load_state_dict(driver.state_dict())
        torch_steps(parameters, optimizer, torch_driver, arm_index, range(half, STEPS))
        for parameter, resumed_stack, final in zip(parameters, resumed, expected[arm_index][0]):
            torch.testing.assert_close(parameter.detach(), final.detach(), **TOLERANCE)
            torch.testing.assert_close(resumed_stack[arm_index].detach(), final.detach(), **TOLERANCE)


def test_onecycle_cycles_each_arms_momentum_and_betas():
    for text, key in (("sgd:lr=0.1,momentum=0.9", "momentum"), ("adamw:lr=0.01", "betas")):
        arm = ArmOptimizer(parse_optimizer(text), [torch.nn.Parameter(torch.zeros(2))])
        driver = ScheduleDriver(parse_schedule("onecycle:max_lr=0.1"), arm, epochs=2, steps_per_epoch=5)
        before = arm.param_groups[0][key]
        for _ in range(3):
            arm.step()
            driver.after_step()
        assert arm.param_groups[0][key] != before


@pytest.mark.parametrize(("text", "expected"), [
    ("sgd:lr=0.1,momentum=0.9,nesterov=True,weight_decay=5e-4", True), ("adamw:lr=0.01,betas=(0.9,0.95)", True),
    ("sgd:lr=0.1,momentum=0.9,dampening=0.1", False), ("adamw:lr=0.01,amsgrad=True", False),
    ("rmsprop:lr=0.01", False), ("adam:lr=0.01", False),
])
def test_only_sgd_and_adamw_without_exotic_branches_are_vectorized(text, expected):
    assert vectorizable(parse_optimizer(text)) is expected
