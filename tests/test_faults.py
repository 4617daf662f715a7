"""Faults caused on purpose: kills, signals, full and read-only disks, hostile files, racing processes.

Each test breaks something the way it breaks in practice and checks that nothing good is lost.
"""

import contextlib
import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import slow_epochs, without_timing

from lrlab import Trainer, engine, train
from lrlab.cli import main
from lrlab.config import config_yaml
from lrlab.errors import UsageError
from lrlab.runs import RunDirectory


def same_run(a: RunDirectory, b: RunDirectory) -> bool:
    """Same metrics, same per-step losses and LRs, and bit-identical final weights."""
    final = lambda run: torch.load(run.last_path, weights_only=True)["model"]
    return (without_timing(a.read_metrics()) == without_timing(b.read_metrics()) and a.read_steps() == b.read_steps()
            and all(torch.equal(x, y) for x, y in zip(final(a).values(), final(b).values())))


def config_file(config, path: Path) -> str:
    path.write_text(config_yaml(config, {}))
    return str(path)


def stop_after(epochs: int):
    """An on_epoch callback that stops the run like Ctrl-C once `epochs` are done."""

    def on_epoch(epoch, metrics):
        if epoch == epochs:
            raise KeyboardInterrupt

    return on_epoch


def interrupted_run(config, epochs_done: int) -> RunDirectory:
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, on_epoch=stop_after(epochs_done)).fit()
    return RunDirectory(config.out)


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A small RAM disk, to make a real full or read-only file system; skips where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=False, capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("mounting a tmpfs needs root; the simulated full-disk test covers the same code")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


KILL_DURING_CHECKPOINT = """
import io, os, signal, sys, torch
real_save = torch.save
def save(state, out, *args, **kwargs):
    # Half of a real last.pt reaches the disk, then the process dies without any chance to clean up.
    if "optimizer" in state and state["epoch"] == {epoch}:
        whole = io.BytesIO()
        real_save(state, whole)
        out.write(whole.getvalue()[: len(whole.getvalue()) // 2])
        out.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(state, out, *args, **kwargs)
torch.save = save
from lrlab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_same_seed_gives_identical_metrics_and_a_new_seed_does_not(tiny_config, tmp_path):
    first = tiny_config(out=str(tmp_path / "a"))
    again = tiny_config(out=str(tmp_path / "b"))
    other = tiny_config(out=str(tmp_path / "c"), seed=1)
    for config in (first, again, other):
        train(config)
    read = lambda c: without_timing(RunDirectory(c.out).read_metrics())
    assert read(first) == read(again)
    assert read(first) != read(other)


def test_resume_after_a_kill_matches_an_uninterrupted_run(tiny_config, tmp_path):
    epochs = 6
    uninterrupted = tiny_config(epochs=epochs, schedule="onecycle:max_lr=0.1", out=str(tmp_path / "whole"))
    train(uninterrupted)
    killed = tiny_config(epochs=epochs, schedule="onecycle:max_lr=0.1", out=str(tmp_path / "killed"))
    command = [sys.executable, "-m", "lrlab", "train", "--dataset", "digits", "--model", "cnn", "--width", "4",
               "--epochs", str(epochs), "--batch-size", "64", "--schedule", "onecycle:max_lr=0.1",
               "--optimizer", "sgd:lr=0.05,momentum=0.9", "--out", killed.out, "--quiet"]
    # Slow each epoch down so the kill lands mid-run, after some epochs and before the end.
    process = subprocess.Popen(command, env={**os.environ, **slow_epochs(0.3)})
    metrics_path = Path(killed.out) / "metrics.csv"
    deadline = time.time() + 60
    while time.time() < deadline and (not metrics_path.exists() or len(metrics_path.read_text().splitlines()) < 3):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before_kill = len(RunDirectory(killed.out).read_metrics())
    assert 2 <= done_before_kill < epochs
    result = train(killed, resume=True)
    assert result.state == "finished" and result.epochs_completed == epochs
    assert same_run(RunDirectory(killed.out), RunDirectory(uninterrupted.out))


def test_a_nan_loss_ends_the_run_as_diverged_and_keeps_the_best_checkpoint(tiny_config):
    # Epoch 1 trains at a sane LR; the schedule then multiplies it by 1e10, which overflows float32.
    config = tiny_config(model="mlp", width=16, schedule="exponential:gamma=1e10", optimizer="sgd:lr=0.05,momentum=0.9", epochs=5)
    result = train(config)
    run = RunDirectory(config.out)
    status = run.read_status()
    assert result.state == "diverged" and status["state"] == "diverged"
    assert status["epoch"] >= 2 and status["step"] > 23
    assert "nan" in status["loss"].lower() or "inf" in status["loss"].lower()
    assert torch.load(run.best_path, weights_only=True)["epoch"] == 1
    assert all(row["epoch"] < status["epoch"] for row in run.read_metrics())


def test_an_unwritable_output_directory_is_refused_before_training(tiny_config, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UsageError, match="cannot write to"):
        train(tiny_config(out=str(blocker / "run")))


def test_a_checkpoint_from_a_different_model_is_refused(tiny_config):
    config = tiny_config(epochs=1)
    train(config)
    with pytest.raises(UsageError, match="started with different width"):
        train(tiny_config(epochs=1, width=8), resume=True)
    # Same config, but the checkpoint file itself holds another model's weights.
    run = RunDirectory(config.out)
    checkpoint = torch.load(run.last_path, weights_only=True)
    checkpoint["model"] = {"weight": torch.zeros(3)}
    torch.save(checkpoint, run.last_path)
    with pytest.raises(UsageError, match="does not fit this run's model"):
        Trainer(config, resume=True).prepare()


@pytest.mark.parametrize("signal_number, exit_status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_mark_the_run_interrupted_and_it_resumes(tiny_config, tmp_path, signal_number, exit_status):
    out = tmp_path / "run"
    command = ["lrlab", "train", "--dataset", "digits", "--model", "cnn", "--width", "4", "--epochs", "6",
               "--batch-size", "64", "--out", str(out), "--quiet"]
    # A shell without job control starts background jobs with SIGINT ignored, and Python then installs
    # no Ctrl-C handler; the run gets Ctrl-C as a terminal would give it, however pytest was started.
    process = subprocess.Popen(command, env={**os.environ, **slow_epochs(0.3)}, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "last.pt").exists():
        time.sleep(0.05)
    process.send_signal(signal_number)
    _, error = process.communicate(timeout=60)
    assert process.returncode == exit_status
    assert RunDirectory(out).read_status()["state"] == "interrupted"
    assert f"lrlab train --out {out} --resume" in error
    from lrlab.cli import main

    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0  # exactly what the hint says
    assert len(RunDirectory(out).read_metrics()) == 6


def test_a_second_process_on_the_same_run_directory_is_refused(tiny_config, tmp_path):
    config = tiny_config()
    owner = subprocess.Popen(["sleep", "30"])
    try:
        Path(config.out).mkdir(parents=True)
        (Path(config.out) / "run.lock").write_text(f"{owner.pid}\n")
        with pytest.raises(UsageError, match=f"in use by process {owner.pid}"):
            train(config)
        assert not (Path(config.out) / "config.yaml").exists()
    finally:
        owner.kill()
        owner.wait()


def test_a_stale_lock_from_a_dead_process_is_taken_over_and_says_so(tiny_config, capsys):
    config = tiny_config(epochs=1)
    gone = subprocess.Popen(["true"])
    gone.wait()
    Path(config.out).mkdir(parents=True)
    (Path(config.out) / "run.lock").write_text(f"{gone.pid}\n")
    assert train(config).state == "finished"
    assert f"taking over the stale lock of {config.out} (process {gone.pid} is gone)" in capsys.readouterr().err
    assert not (Path(config.out) / "run.lock").exists()


KILL_AT_STEP = """
import os, signal, sys, torch
real_step = torch.optim.SGD.step
taken = 0
def step(self, *args, **kwargs):
    global taken
    taken += 1
    if taken == {step}:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_step(self, *args, **kwargs)
torch.optim.SGD.step = step
from lrlab.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("kill_at", random.Random(7).sample(range(2, 4 * 23), 3))
def test_a_kill_at_a_random_step_resumes_to_the_uninterrupted_run(tiny_config, tmp_path, kill_at):
    whole = tiny_config(epochs=4, schedule="onecycle:max_lr=0.1", out=str(tmp_path / "whole"))
    train(whole)
    killed = tiny_config(epochs=4, schedule="onecycle:max_lr=0.1", out=str(tmp_path / "killed"))
    process = subprocess.run([sys.executable, "-c", KILL_AT_STEP.format(step=kill_at), "train",
                              "--config", config_file(killed, tmp_path / "killed.yaml")], check=False)
    assert process.returncode == -signal.SIGKILL
    run = RunDirectory(killed.out)
    steps_per_epoch = sum(row["epoch"] == 1 for row in RunDirectory(whole.out).read_steps())
    assert kill_at <= 4 * steps_per_epoch
    assert len(run.read_metrics()) == (kill_at - 1) // steps_per_epoch  # the epochs finished before the kill, no more
    assert train(killed, resume=True).state == "finished"
    assert same_run(run, RunDirectory(whole.out))


def test_a_kill_during_a_checkpoint_write_keeps_the_previous_one_and_resume_matches(tiny_config, tmp_path):
    whole = tiny_config(epochs=4, out=str(tmp_path / "whole"))
    train(whole)
    killed = tiny_config(epochs=4, out=str(tmp_path / "killed"))
    process = subprocess.run([sys.executable, "-c", KILL_DURING_CHECKPOINT.format(epoch=3), "train",
                              "--config", config_file(killed, tmp_path / "killed.yaml")], check=False)
    assert process.returncode == -signal.SIGKILL
    run = RunDirectory(killed.out)
    assert list(run.path.glob(".last.pt.*.tmp")), "the half-written checkpoint should be beside last.pt"
    assert run.load_checkpoint(run.last_path)["epoch"] == 2  # the previous last.pt, whole
    assert train(killed, resume=True).state == "finished"
    assert not list(run.path.glob(".*.tmp"))
    assert same_run(run, RunDirectory(whole.out))


def test_a_checkpoint_from_another_lrlab_version_is_refused_with_both_versions(tiny_config, capsys):
    config = tiny_config(epochs=3)
    run = interrupted_run(config, 1)
    checkpoint = run.load_checkpoint(run.last_path)
    before = run.metrics_path.read_bytes()
    torch.save({**checkpoint, "format": 2, "lrlab_version": "9.9.9"}, run.last_path)
    capsys.readouterr()
    assert main(["train", "--out", config.out, "--resume", "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "written by lrlab 9.9.9 in checkpoint format 2" in error and "reads format 1" in error
    torch.save(torch.zeros(3), run.last_path)
    with pytest.raises(UsageError, match="is not an lrlab checkpoint"):
        train(config, resume=True)
    assert run.metrics_path.read_bytes() == before


class RunsCodeWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_crafted_to_run_code_is_refused_and_runs_nothing(tiny_config, tmp_path, capsys):
    config = tiny_config(epochs=3)
    run = interrupted_run(config, 1)
    marker = tmp_path / "pwned"
    torch.save({"format": 1, "model": RunsCodeWhenUnpickled(marker)}, run.last_path)
    assert main(["train", "--out", config.out, "--resume", "--quiet"]) == 2
    assert "cannot be loaded safely" in capsys.readouterr().err
    assert not marker.exists()


def test_a_full_disk_stops_the_run_clearly_and_keeps_the_last_good_checkpoint(tiny_config, tmp_path, monkeypatch):
    whole = tiny_config(epochs=4, out=str(tmp_path / "whole"))
    train(whole)
    config = tiny_config(epochs=4)
    real_save = torch.save

    def save_until_the_disk_fills(state, out, *args, **kwargs):
        if "optimizer" in state and state["epoch"] == 3:
            out.write(b"the first bytes fit")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(state, out, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    with pytest.raises(UsageError, match="No space left on device.*last good checkpoint is kept.*--resume"):
        train(config)
    monkeypatch.undo()
    run = RunDirectory(config.out)
    assert run.load_checkpoint(run.last_path)["epoch"] == 2
    assert not list(run.path.glob(".*.tmp"))
    assert run.read_status()["state"] == "failed" and "No space left" in run.read_status()["reason"]
    assert train(config, resume=True).state == "finished"
    assert same_run(run, RunDirectory(whole.out))


def test_a_real_full_disk_mid_run_exits_2_and_the_run_resumes_once_there_is_room(tiny_config, tmp_path):
    whole = tiny_config(epochs=6, out=str(tmp_path / "whole"))
    train(whole)
    with tmpfs(tmp_path / "disk", "2m") as disk:
        config = tiny_config(epochs=6, out=str(disk / "run"))
        process = subprocess.Popen(["lrlab", "train", "--config", config_file(config, tmp_path / "run.yaml")],
                                   env={**os.environ, **slow_epochs(0.3)}, stderr=subprocess.PIPE, text=True)
        run = RunDirectory(config.out)
        deadline = time.time() + 60
        # status.json names epoch 2 only once that epoch's last.pt is written: the disk fills after it.
        while time.time() < deadline and run.read_status().get("epoch", 0) < 2:
            time.sleep(0.05)
        filler = disk / "filler"
        with open(filler, "wb") as handle, contextlib.suppress(OSError):
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        _, error = process.communicate(timeout=60)
        assert process.returncode == 2, error
        assert "No space left on device" in error and len(error.strip().splitlines()) == 1
        kept = run.load_checkpoint(run.last_path)["epoch"]
        assert 2 <= kept < 6
        filler.unlink()
        assert main(["train", "--out", config.out, "--resume", "--quiet"]) == 0
        assert not list(run.path.glob(".*.tmp"))
        assert same_run(run, RunDirectory(whole.out))


def test_a_read_only_run_directory_is_refused_and_left_exactly_as_it_was(tiny_config, tmp_path, capsys):
    whole = tiny_config(epochs=3, out=str(tmp_path / "whole"))
    train(whole)
    with tmpfs(tmp_path / "disk", "4m") as disk:
        config = tiny_config(epochs=3, out=str(disk / "run"))
        run = interrupted_run(config, 1)
        before = {path.name: path.read_bytes() for path in run.path.iterdir()}
        remount(disk, "ro")
        capsys.readouterr()
        assert main(["train", "--out", config.out, "--resume", "--quiet"]) == 2
        error = capsys.readouterr().err.strip()
        assert "Read-only file system" in error and len(error.splitlines()) == 1
        assert {path.name: path.read_bytes() for path in run.path.iterdir()} == before
        remount(disk, "rw")
        assert main(["train", "--out", config.out, "--resume", "--quiet"]) == 0
        assert same_run(run, RunDirectory(whole.out))


def test_deterministic_turns_torch_deterministic_on_for_the_run_only_and_says_what_it_costs(tiny_config, tmp_path, capsys):
    seen = []
    plain = tiny_config(out=str(tmp_path / "plain"))
    strict = tiny_config(out=str(tmp_path / "strict"), deterministic=True, quiet=False)
    train(plain)
    engine.train(strict, on_epoch=lambda epoch, metrics: seen.append(
        (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)))
    assert seen == [(True, False)] * 3
    assert not torch.are_deterministic_algorithms_enabled()
    assert "--deterministic: the cpu kernels lrlab uses are deterministic already" in capsys.readouterr().err
    # On the CPU the flag changes nothing that is computed.
    assert without_timing(RunDirectory(plain.out).read_metrics()) == without_timing(RunDirectory(strict.out).read_metrics())
