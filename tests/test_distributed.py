"""One run over two CPU processes with torchrun (gloo): the same run as one process with the same global batch."""

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import slow_epochs

from lrlab.cli import main
from lrlab.data import BatchLoader
from lrlab.distributed import Ranks, rank_device
from lrlab.runs import RunDirectory

pytestmark = pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")

# An MLP has no BatchNorm, whose statistics on the CPU are each process's own half of the batch
# (SyncBatchNorm needs CUDA); with it the two runs are the same computation split in two.
# On the CPU, also where a GPU is: these tests pin gloo's behaviour, and two processes may share one GPU.
RUN = ["--device", "cpu", "--dataset", "digits", "--model", "mlp", "--width", "32", "--batch-size", "64", "--precision", "fp32",
       "--optimizer", "sgd:lr=0.05,momentum=0.9", "--schedule", "onecycle:max_lr=0.1", "--quiet"]


def torchrun(*arguments: str, **options) -> subprocess.Popen:
    command = ["torchrun", "--standalone", "--nproc-per-node", "2", "-m", "lrlab", "train", *RUN, *arguments]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **options.pop("env", {})}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **options)


def single_process(out: Path, epochs: int) -> RunDirectory:
    subprocess.run([sys.executable, "-m", "lrlab", "train", *RUN, "--epochs", str(epochs), "--out", str(out)], check=True)
    return RunDirectory(out)


def assert_same_curves(a: RunDirectory, b: RunDirectory) -> None:
    steps_a, steps_b = a.read_steps(), b.read_steps()
    assert len(steps_a) == len(steps_b) > 0
    for x, y in zip(steps_a, steps_b):
        assert x["step"] == y["step"] and x["lr"] == pytest.approx(y["lr"], rel=1e-12)
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4, abs=1e-5)
    for x, y in zip(a.read_metrics(), b.read_metrics()):
        for column in ("train_loss", "test_loss", "test_acc", "train_acc"):
            assert x[column] == pytest.approx(y[column], rel=1e-4, abs=1e-4), column


def test_two_processes_give_the_loss_curve_of_one_with_the_same_global_batch(tmp_path):
    one = single_process(tmp_path / "one", epochs=3)
    process = torchrun("--epochs", "3", "--out", str(tmp_path / "two"))
    output, error = process.communicate(timeout=300)
    assert process.returncode == 0, error[-2000:]
    two = RunDirectory(tmp_path / "two")
    assert_same_curves(one, two)
    assert output.count("finished: 3 epochs") == 1  # rank 0 alone reports, and alone writes
    assert sorted(p.name for p in two.path.iterdir()) == ["best.pt", "config.yaml", "last.pt", "log.txt", "metrics.csv",
                                                          "status.json", "steps.csv"]
    assert two.read_status()["state"] == "finished"


def test_a_torchrun_run_killed_mid_way_resumes_under_torchrun(tmp_path):
    one = single_process(tmp_path / "one", epochs=5)
    out = tmp_path / "two"
    process = torchrun("--epochs", "5", "--out", str(out), env=slow_epochs(0.5))
    run = RunDirectory(out)
    deadline = time.time() + 120
    while time.time() < deadline and len(run.read_metrics()) < 2 and process.poll() is None:
        time.sleep(0.05)
    os.kill(run.read_status()["pid"], signal.SIGKILL)  # rank 0 dies; torchrun then stops rank 1 and fails
    process.communicate(timeout=120)
    assert process.returncode != 0
    assert 2 <= len(run.read_metrics()) < 5
    resumed = torchrun("--epochs", "5", "--out", str(out), "--resume")
    _, error = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, error[-2000:]
    assert len(run.read_metrics()) == 5 and run.read_status()["state"] == "finished"
    assert_same_curves(one, run)


@pytest.mark.parametrize("count, batch_size, world", [(10, 4, 2), (14, 5, 2), (9, 8, 3)])
def test_shards_of_a_batch_are_disjoint_and_together_are_the_batch(count, batch_size, world):
    images = torch.arange(count, dtype=torch.uint8).view(count, 1, 1, 1).expand(count, 1, 2, 2).contiguous()
    labels = torch.arange(count)
    make = lambda shard: BatchLoader(images, labels, batch_size, [0.0], [1 / 255], shuffle=True, seed=3, shard=shard)
    whole = [labels for _, labels in make((0, 1))]
    shards = [[labels for _, labels in make((rank, world))] for rank in range(world)]
    assert all(len(s) == len(shards[0]) for s in shards)
    assert len(shards[0]) == math.ceil(count / batch_size) - (1 if 0 < count % batch_size < 2 * world else 0)
    for index, parts in enumerate(zip(*shards)):
        together = torch.cat(parts)
        assert sorted(together.tolist()) == sorted(whole[index].tolist())
        assert all(len(part) >= 1 for part in parts)


def test_each_torchrun_process_takes_its_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert rank_device(Ranks(rank=3, world=4, local_rank=1, local_world=2), torch.device("cuda"), False) == torch.device("cuda", 1)


def test_more_processes_than_gpus_train_on_the_cpu_with_a_note_when_the_device_was_left_to_lrlab(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for rank in (0, 1):
        assert rank_device(Ranks(rank=rank, world=2, local_rank=rank, local_world=2), torch.device("cuda"), True) == torch.device("cpu")
    note = capsys.readouterr().err
    assert note.count("\n") == 1  # rank 0 alone says it
    assert "torchrun started 2 processes for 1 GPU(s), so every process trains on the CPU (gloo)" in note


def test_more_processes_than_gpus_with_device_cuda_is_refused_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    status = main(["train", "--dataset", "digits", "--device", "cuda", "--quiet", "--out", str(tmp_path / "run")])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1
    assert "torchrun started 2 processes on this machine, which has 1 GPU(s); start at most 1 (--nproc-per-node 1) or pass --device cpu" in error
    assert not RunDirectory(tmp_path / "run").holds_run()
