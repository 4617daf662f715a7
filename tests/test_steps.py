"""The training step of one model, and the CUDA-graph capture's retirement (never run on a GPU, removed)."""

import torch
from torch import nn

from lrlab.config import load_config
from lrlab.steps import eager_step


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def batches(count: int, seed: int = 1, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 1, 8, 8, generator=generator), torch.randint(0, 10, (size,), generator=generator))
            for _ in range(count)]


def test_eager_step_is_the_quickstarts_step_bit_for_bit():
    ours, theirs = small_model(), small_model()
    our_optimizer = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    their_optimizer = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for images, labels in batches(5):
        loss, logits = eager_step(ours, nn.CrossEntropyLoss(), our_optimizer, images, labels)
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
    scaled_loss, _ = eager_step(scaled, nn.CrossEntropyLoss(), torch.optim.SGD(scaled.parameters(), lr=0.1), images, labels,
                                loss_scale=2.0)
    plain_loss, _ = eager_step(plain, nn.CrossEntropyLoss(), torch.optim.SGD(plain.parameters(), lr=0.2), images, labels)
    assert torch.equal(scaled_loss, plain_loss)
    for a, b in zip(scaled.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b)


def test_a_run_directory_written_with_graph_capture_still_loads(tmp_path):
    # Runs written while --graph-capture existed record it in config.yaml; they still resume and report.
    path = tmp_path / "config.yaml"
    path.write_text("dataset: digits\nepochs: 2\ngraph_capture: auto\nversions:\n  lrlab: 0.1.0\n")
    config = load_config(path)
    assert config.epochs == 2 and not hasattr(config, "graph_capture")
