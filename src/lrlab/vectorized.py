"""SGD and AdamW applied to the stacked parameters of a group of runs in one set of kernels.

Every run (arm) of a group keeps an `ArmOptimizer`: a real `torch.optim.Optimizer` whose
param_groups hold that arm's hyperparameters exactly as `torch.optim.SGD` / `AdamW` would, so the
arm's own torch scheduler (through `ScheduleDriver`) moves its LR, momentum or betas. The group's
`VectorOptimizer` reads those hyperparameters as one tensor per name (leading axis = arm) and
updates every arm's parameters at once, following torch's single-tensor algorithms
(torch/optim/sgd.py `_single_tensor_sgd`, torch/optim/adam.py `_single_tensor_adam`). Between
epochs the state moves into each ArmOptimizer in torch's own state_dict layout, so an arm's
checkpoint resumes in an ordinary run, and an ordinary run's checkpoint resumes in a group.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from lrlab.optimizers import OptimizerSpec, build_optimizer

# Per algorithm: the hyperparameters read per arm each step, and the arguments whose values are
# fixed for the whole group (they choose the algorithm's branches, so they cannot vary by arm).
PER_ARM = {"sgd": ("lr", "momentum", "weight_decay"), "adamw": ("lr", "betas", "eps", "weight_decay")}
SUPPORTED_FIXED = {
    "sgd": {"nesterov": (True, False), "dampening": (0, 0.0), "maximize": (False,), "foreach": (None, True, False)},
    "adamw": {"amsgrad": (False,), "maximize": (False,), "foreach": (None, True, False)},
}


def vectorizable(spec: OptimizerSpec) -> bool:
    """Whether `spec` can train stacked: SGD (any momentum, Nesterov, weight decay; no dampening) or AdamW."""
    if spec.name not in PER_ARM:
        return False
    fixed = SUPPORTED_FIXED[spec.name]
    for name, value in spec.arguments.items():
        if name in PER_ARM[spec.name]:
            continue
        if name not in fixed or value not in fixed[name]:
            return False
    return True


def group_key(spec: OptimizerSpec) -> tuple[Any, ...]:
    """What runs must share to be stepped together: the algorithm and its branch-choosing flags."""
    return (spec.name, bool(spec.arguments.get("nesterov", False)))


class ArmOptimizer(torch.optim.Optimizer):
    """One arm's hyperparameters and (between epochs) its state, in torch's layout for `spec`.

    Its `step()` does no arithmetic, the group's VectorOptimizer does; it exists so the arm's torch
    scheduler sees its optimizer stepped, as torch's LRScheduler checks.
    """

    def __init__(self, spec: OptimizerSpec, parameters: Iterable[torch.nn.Parameter]):
        parameters = list(parameters)
        # The real class checks the arguments and fills in its defaults, so the param_groups (and
        # the state_dict) have exactly the keys and values torch would give them.
        defaults = build_optimizer(spec, parameters).defaults
        super().__init__(parameters, defaults)
        self.spec = spec

    def step(self, closure: Any = None) -> None:  # noqa: ARG002 - torch's signature
        return None


class VectorOptimizer:
    """SGD or AdamW over stacked parameters (leading axis = arm), with each arm's hyperparameters
    read from its ArmOptimizer before every step."""

    def __init__(self, parameters: list[torch.Tensor], arms: list[ArmOptimizer]):
        names = {arm.spec.name for arm in arms}
        if len(names) != 1 or not all(vectorizable(arm.spec) for arm in arms):
            raise ValueError(f"arms cannot be stepped together: {sorted(names)}")
        self.algorithm = names.pop()
        self.nesterov = bool(arms[0].param_groups[0].get("nesterov", False))
        self.parameters = parameters
        self.arms = list(arms)
        self._import_state()

    # -- state in and out of the arms ---------------------------------------------------------

    def _arm_states(self, arm: ArmOptimizer) -> list[dict[str, torch.Tensor]]:
        return [arm.state.get(parameter, {}) for parameter in arm.param_groups[0]["params"]]

    def _stack(self, key: str, index: int, parameter: torch.Tensor) -> torch.Tensor:
        """Arm states' `key` for parameter `index`, stacked; zeros for arms that have not stepped."""
        slices = []
        for arm in self.arms:
            value = self._arm_states(arm)[index].get(key)
            slices.append(torch.zeros_like(parameter[0]) if value is None else value.to(parameter.device, parameter.dtype))
        return torch.stack(slices)

    def _import_state(self) -> None:
        device = self.parameters[0].device
        first_states = [self._arm_states(arm)[0] if self._arm_states(arm) else {} for arm in self.arms]
        if self.algorithm == "sgd":
            # A zero buffer gives what torch's first step does (buf = grad): 0 * momentum + grad.
            self.buffers = {"momentum_buffer": [self._stack("momentum_buffer", i, p) for i, p in enumerate(self.parameters)]}
            self.steps = torch.tensor([float("momentum_buffer" in state) for state in first_states], dtype=torch.float64, device=device)
        else:
            self.buffers = {key: [self._stack(key, i, p) for i, p in enumerate(self.parameters)] for key in ("exp_avg", "exp_avg_sq")}
            self.steps = torch.tensor([float(state["step"]) if "step" in state else 0.0 for state in first_states],
                                      dtype=torch.float64, device=device)

    def export_state(self) -> None:
        """Put each arm's slice of the state into its ArmOptimizer, as torch's optimizer would hold it."""
        steps = self.steps.tolist()
        for arm_index, arm in enumerate(self.arms):
            arm.state.clear()
            if not steps[arm_index]:
                continue
            group = arm.param_groups[0]
            if self.algorithm == "sgd" and group["momentum"] == 0:
                continue  # torch keeps no momentum buffer then
            for index, parameter in enumerate(group["params"]):
                state: dict[str, torch.Tensor] = {}
                if self.algorithm == "adamw":
                    state["step"] = torch.tensor(steps[arm_index], dtype=torch.float32)
                for key, stacked in self.buffers.items():
                    state[key] = stacked[index][arm_index].detach().clone().to(parameter.device)
                arm.state[parameter] = state

    def keep(self, arm_indices: list[int], parameters: list[torch.Tensor]) -> None:
        """Go on with only the arms at `arm_indices` (the others ended); `parameters` are the new stacks."""
        index = torch.tensor(arm_indices, device=self.steps.device)
        self.parameters = parameters
        self.arms = [self.arms[i] for i in arm_indices]
        self.steps = self.steps[index]
        self.buffers = {key: [value[index] for value in values] for key, values in self.buffers.items()}

    # -- the step ------------------------------------------------------------------------------

    def _per_arm(self, name: str) -> torch.Tensor:
        values = [arm.param_groups[0][name] for arm in self.arms]
        # From pinned memory the copy to a GPU is queued without waiting for the device.
        on_cuda = self.steps.device.type == "cuda"
        return torch.tensor(values, dtype=torch.float64, pin_memory=on_cuda).to(self.steps.device, non_blocking=True)

    @torch.no_grad()
    def step(self) -> None:
        """One optimizer step for every arm, then each arm is marked stepped for its scheduler."""
        self.steps += 1
        if self.algorithm == "sgd":
            self._sgd()
        else:
            self._adamw()
        for arm in self.arms:
            arm.step()

    def zero_grad(self) -> None:
        for parameter in self.parameters:
            parameter.grad = None

    def _sgd(self) -> None:
        lr, momentum, weight_decay = (self._per_arm(name) for name in PER_ARM["sgd"])
        for parameter, buffer in zip(self.parameters, self.buffers["momentum_buffer"]):
            if parameter.grad is None:
                continue
            shape = (-1,) + (1,) * (parameter.dim() - 1)
            arm_momentum = momentum.to(parameter.dtype).view(shape)
            grad = parameter.grad + weight_decay.to(parameter.dtype).view(shape) * parameter
            buffer.mul_(arm_momentum).add_(grad)
            grad = grad + arm_momentum * buffer if self.nesterov else buffer
            parameter.sub_(lr.to(parameter.dtype).view(shape) * grad)

    def _adamw(self) -> None:
        lr, betas, eps, weight_decay = (self._per_arm(name) for name in PER_ARM["adamw"])
        beta1, beta2 = betas[:, 0], betas[:, 1]
        # The scalars in float64, as torch computes them in Python floats.
        step_size = lr / (1 - beta1 ** self.steps)
        bias_correction2_sqrt = (1 - beta2 ** self.steps).sqrt()
        decay = 1 - lr * weight_decay
        for parameter, exp_avg, exp_avg_sq in zip(self.parameters, self.buffers["exp_avg"], self.buffers["exp_avg_sq"]):
            if parameter.grad is None:
                continue
            shape = (-1,) + (1,) * (parameter.dim() - 1)

            def arm(values: torch.Tensor, shape: tuple[int, ...] = shape, dtype: torch.dtype = parameter.dtype) -> torch.Tensor:
                return values.to(dtype).view(shape)

            grad = parameter.grad
            parameter.mul_(arm(decay))
            exp_avg.lerp_(grad, arm(1 - beta1))
            exp_avg_sq.mul_(arm(beta2)).addcmul_(grad, grad * arm(1 - beta2))
            denom = (exp_avg_sq.sqrt() / arm(bias_correction2_sqrt)).add_(arm(eps))
            parameter.sub_(arm(step_size) * exp_avg / denom)
