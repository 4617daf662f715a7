import pytest
import torch

from lrlab import RunConfig


@pytest.fixture
def tiny_config(tmp_path):
    """A run that takes well under a second: digits, a narrow CNN, a few epochs, on the CPU.

    The CPU is pinned because the tests built on this fixture assert CPU behaviour (its notes, its
    bf16 numbers); a test of the CUDA path asks for device="cuda" and skips where there is none.
    """

    def make(**overrides):
        values = {"dataset": "digits", "model": "cnn", "width": 4, "epochs": 3, "batch_size": 64, "seed": 0,
                  "optimizer": "sgd:lr=0.05,momentum=0.9", "out": str(tmp_path / "run"), "quiet": True, "device": "cpu"}
        values.update(overrides)
        return RunConfig(**values)

    return make


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """No test reads or writes the user's real cache or data folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LRLAB_DATA", raising=False)
    monkeypatch.delenv("LRLAB_MIRROR", raising=False)
    torch.set_num_threads(2)
