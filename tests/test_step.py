"""The two kinds of step: plain (one model) is the quickstart's step; stacked gives each arm what the plain step
gives its run; and the CUDA-graph capture's retirement (never run on a GPU, removed)."""

import torch
from torch import nn

from lrlab.config import load_config
from lrlab.optimizers import parse_optimizer
from lrlab.step import PlainStep, StackedStep
from lrlab.vectorized import ArmOptimizer


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def batches(count: int, seed: int = 1, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 1, 8, 8, generator=generator), torch.randint(0, 10, (size,), generator=generator))
            for _ in range(count)]


def test_the_plain_step_is_the_quickstarts_step_bit_for_bit():
    ours, theirs = small_model(), small_model()
    our_optimizer = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    their_optimizer = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for images, labels in batches(5):
        losses, logits = PlainStep(ours, our_optimizer, nn.CrossEntropyLoss()).train(images, labels)
        loss, logits = losses[0], logits[0]
        their_logits = theirs(images)
        their_loss = nn.functional.cross_entropy(their_logits, labels)
        their_optimizer.zero_grad()
        their_loss.backward()
        their_optimizer.step()
        assert torch.equal(loss, their_loss.detach()) and torch.equal(logits, their_logits.detach())
        assert not loss.requires_grad
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))


def test_a_loss_scale_scales_the_gradient_not_the_loss_returned():
    scaled, plain = small_model(), small_model()
    images, labels = batches(1)[0]
    scaled_loss, _ = PlainStep(scaled, torch.optim.SGD(scaled.parameters(), lr=0.1), nn.CrossEntropyLoss()).train(
        images, labels, loss_scale=2.0)
    plain_loss, _ = PlainStep(plain, torch.optim.SGD(plain.parameters(), lr=0.2), nn.CrossEntropyLoss()).train(images, labels)
    assert torch.equal(scaled_loss, plain_loss)
    for a, b in zip(scaled.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b)


def test_each_arm_of_a_stacked_step_takes_the_plain_step_of_its_own_run():
    lrs = (0.1, 0.03)
    models = [small_model(seed) for seed in (0, 1)]
    alone = [small_model(seed) for seed in (0, 1)]
    specs = [parse_optimizer(f"sgd:lr={lr},momentum=0.9") for lr in lrs]
    stacked = StackedStep(models, [ArmOptimizer(spec, model.parameters()) for spec, model in zip(specs, models)],
                          nn.CrossEntropyLoss())
    plain = [PlainStep(model, torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9), nn.CrossEntropyLoss())
             for model, lr in zip(alone, lrs)]
    for images, labels in batches(4):
        losses, logits = stacked.train(images, labels)
        assert losses.shape == (2,) and logits.shape == (2, len(labels), 10)
        for arm, step in enumerate(plain):
            loss, their_logits = step.train(images, labels)
            torch.testing.assert_close(losses[arm], loss[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(logits[arm], their_logits[0], atol=1e-5, rtol=1e-5)
    stacked.export()  # each arm's weights back in its own model, for its checkpoint
    for model, reference in zip(models, alone):
        for a, b in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    stacked.keep([1])  # arm 0 left the group: arm 1 goes on alone, unchanged
    images, labels = batches(1, seed=9)[0]
    losses, _ = stacked.train(images, labels)
    loss, _ = plain[1].train(images, labels)
    assert stacked.arms == 1 and losses.shape == (1,)
    torch.testing.assert_close(losses[0], loss[0], atol=1e-5, rtol=1e-5)


def test_a_run_directory_written_with_graph_capture_still_loads(tmp_path):
    # Runs written while --graph-capture existed record it in config.yaml; they still resume and report.
    path = tmp_path / "config.yaml"
    path.write_text("dataset: digits\nepochs: 2\ngraph_capture: auto\nversions:\n  lrlab: 0.1.0\n")
    config = load_config(path)
    assert config.epochs == 2 and not hasattr(config, "graph_capture")
