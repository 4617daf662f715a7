"""Executors: the same runs whether they train here, in a local process pool or as Ray tasks."""

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import slow_epochs, without_timing

from lrlab.cli import main
from lrlab.aggregate import aggregate
from lrlab.grid import run_comparison
from lrlab.comparison import Variant
from lrlab.errors import UsageError
from lrlab.executors import (
    InProcess,
    LocalProcesses,
    build_executor,
    shared_storage_refusal,
)
from lrlab.report import verdict
from lrlab.runs import RunDirectory

VARIANTS = [Variant("constant", "constant"), Variant("step", "step:step_size=1,gamma=0.5")]
SEEDS = [0, 1]



def grid_numbers(out: Path) -> dict:
    """Every run's metrics and steps, keyed by schedule and seed: what must not depend on the executor."""
    return {(v.label, s): (without_timing(RunDirectory(out / v.label / f"seed-{s}").read_metrics()),
                           RunDirectory(out / v.label / f"seed-{s}").read_steps())
            for v in VARIANTS for s in SEEDS}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module; epochs slowed so a kill lands mid-run."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": slow_epochs(0.3)})
    yield ray
    ray.shutdown()


def kill_a_worker_mid_run(run: RunDirectory, killed: list) -> threading.Thread:
    """In the background: once `run` has finished an epoch, SIGKILL the process training it."""

    def kill() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            status = run.read_status()
            if status.get("state") == "running" and len(run.read_metrics()) >= 1 and status.get("pid"):
                os.kill(status["pid"], signal.SIGKILL)
                killed.append(status["pid"])
                return
            time.sleep(0.05)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def test_a_seed_gives_the_same_numbers_in_process_in_a_pool_and_on_ray(tiny_config, tmp_path, local_ray):
    base = tiny_config(epochs=2)
    executors = {
        "here": InProcess(threads=1),
        "pool": build_executor("local", workers=2, cpus_per_run=1),
        "ray": build_executor("ray", cpus_per_run=1),
    }
    assert isinstance(executors["pool"], LocalProcesses)
    numbers = {}
    for name, executor in executors.items():
        outcomes = run_comparison(base, VARIANTS, SEEDS, tmp_path / name, show_progress=False, executor=executor,
                                  runs_per_pass=1)  # grouped runs drift from runs alone: the same path everywhere
        assert [o.state for o in outcomes] == ["finished"] * 4
        numbers[name] = grid_numbers(tmp_path / name)
    assert numbers["pool"] == numbers["here"]
    assert numbers["ray"] == numbers["here"]
    assert numbers["here"][("constant", 0)] != numbers["here"][("constant", 1)]


def test_a_pool_worker_killed_mid_run_is_retried_from_its_checkpoint(tiny_config, tmp_path, monkeypatch):
    for name, value in slow_epochs(0.3).items():  # for the pool's worker processes
        monkeypatch.setenv(name, value)
    base = tiny_config(epochs=4)
    run_comparison(base, VARIANTS[:1], [0], tmp_path / "whole", show_progress=False, executor=InProcess(threads=1), runs_per_pass=1)
    victim = RunDirectory(tmp_path / "pool" / "step" / "seed-0")
    killed = []
    killer = kill_a_worker_mid_run(victim, killed)
    outcomes = run_comparison(base, VARIANTS, [0], tmp_path / "pool", show_progress=False,
                              executor=build_executor("local", workers=2, cpus_per_run=1, max_retries=1), runs_per_pass=1)
    killer.join()
    assert killed, "the killer never found the run training"
    assert [(o.label, o.state, o.retries) for o in outcomes] == [("constant", "finished", 0), ("step", "finished", 1)]
    assert victim.read_status()["retries"] == 1
    assert 1 <= len(victim.read_metrics()) and victim.read_status()["state"] == "finished"
    assert "step seed 0 (1x)" in verdict(aggregate(tmp_path / "pool"))
    survivor = RunDirectory(tmp_path / "pool" / "constant" / "seed-0")
    assert without_timing(survivor.read_metrics()) == without_timing(RunDirectory(tmp_path / "whole" / "constant" / "seed-0").read_metrics())


def test_a_ray_worker_killed_mid_run_is_retried_and_ends_as_if_never_killed(tiny_config, tmp_path, local_ray):
    base = tiny_config(epochs=4)
    run_comparison(base, VARIANTS[1:], [0], tmp_path / "whole", show_progress=False, executor=InProcess(threads=1), runs_per_pass=1)
    victim = RunDirectory(tmp_path / "ray" / "step" / "seed-0")
    killed = []
    killer = kill_a_worker_mid_run(victim, killed)
    outcomes = run_comparison(base, VARIANTS, [0], tmp_path / "ray", show_progress=False,
                              executor=build_executor("ray", cpus_per_run=1, max_retries=2), runs_per_pass=1)
    killer.join()
    assert killed
    assert {(o.label, o.state, o.retries) for o in outcomes} == {("constant", "finished", 0), ("step", "finished", 1)}
    assert without_timing(victim.read_metrics()) == without_timing(RunDirectory(tmp_path / "whole" / "step" / "seed-0").read_metrics())
    assert victim.read_steps() == RunDirectory(tmp_path / "whole" / "step" / "seed-0").read_steps()


def test_a_worker_that_keeps_dying_fails_its_run_and_the_others_finish(tiny_config, tmp_path, monkeypatch):
    for name, value in slow_epochs(0.3).items():  # for the pool's worker processes
        monkeypatch.setenv(name, value)
    victim = RunDirectory(tmp_path / "pool" / "step" / "seed-0")
    killed = []
    killer = kill_a_worker_mid_run(victim, killed)
    outcomes = run_comparison(tiny_config(epochs=3), VARIANTS, [0], tmp_path / "pool", show_progress=False,
                              executor=build_executor("local", workers=2, cpus_per_run=1, max_retries=0), runs_per_pass=1)
    killer.join()
    assert [(o.label, o.state) for o in outcomes] == [("constant", "finished"), ("step", "failed")]
    assert "SIGKILL" in victim.read_status()["reason"] and "--max-retries 0" in victim.read_status()["reason"]


def test_on_a_cluster_a_path_only_this_machine_has_is_refused():
    refusal = shared_storage_refusal(Path("runs/big"), storage_given=False, nodes=3)
    assert "3 nodes" in refusal and "--storage" in refusal
    assert shared_storage_refusal(Path("runs/big"), storage_given=True, nodes=3) is None
    assert shared_storage_refusal(Path("runs/big"), storage_given=False, nodes=1) is None


def test_on_a_cluster_every_node_must_see_the_run_folder(tmp_path, local_ray, monkeypatch):
    from lrlab import executors

    executor = build_executor("ray", storage_given=True)
    node = local_ray.nodes()[0]
    monkeypatch.setattr(local_ray, "nodes", lambda: [node, node])  # the one real node, counted twice
    executor.check_storage(tmp_path)  # it sees the token: accepted
    assert not list(tmp_path.glob(".lrlab-storage-check-*"))
    monkeypatch.setattr(executors, "_reads_token", lambda path, token: False)
    with pytest.raises(UsageError, match="is not visible from node"):
        executor.check_storage(tmp_path)
    unshared = build_executor("ray", storage_given=False)
    with pytest.raises(UsageError, match="pass --storage DIR"):
        unshared.check_storage(Path("runs/big"))


def test_without_ray_the_ray_backend_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UsageError, match=r"pip install 'lrlab\[ray\]'"):
        build_executor("ray")
    code = main(["compare", "--schedules", "constant", "--dataset", "digits", "--epochs", "1", "--seeds", "0",
                 "--backend", "ray", "--out", str(tmp_path / "cmp")])
    assert code == 2 and "pip install 'lrlab[ray]'" in capsys.readouterr().err


@pytest.mark.parametrize("arguments, says", [
    (["--workers", "0"], "--workers 0 should be at least 1"),
    (["--backend", "ray", "--workers", "2"], "--workers is for --backend local"),
    (["--ray-address", "auto"], "--ray-address is for --backend ray"),
    (["--storage", "/mnt/shared"], "--storage is for --backend ray"),
    (["--max-retries", "-1"], "--max-retries -1 should be 0 or more"),
])
def test_executor_options_that_do_not_fit_together_are_refused(tmp_path, capsys, arguments, says):
    code = main(["compare", "--schedules", "constant", "--dataset", "digits", "--epochs", "1", "--seeds", "0",
                 "--out", str(tmp_path / "cmp"), *arguments])
    assert code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "cmp").exists()


def test_a_pool_worker_killed_mid_pass_retries_the_runs_of_its_group(tiny_config, tmp_path, monkeypatch):
    for name, value in slow_epochs(0.3).items():  # for the pool's worker processes
        monkeypatch.setenv(name, value)
    base = tiny_config(epochs=3, precision="fp32")
    run_comparison(base, VARIANTS, [0], tmp_path / "whole", show_progress=False, executor=InProcess(threads=1), runs_per_pass=2)
    victim = RunDirectory(tmp_path / "pool" / "step" / "seed-0")
    killed = []
    killer = kill_a_worker_mid_run(victim, killed)
    outcomes = run_comparison(base, VARIANTS, [0], tmp_path / "pool", show_progress=False, runs_per_pass=2,
                              executor=build_executor("local", workers=2, cpus_per_run=1, max_retries=1))
    killer.join()
    assert killed, "the killer never found the group training"
    # Both runs trained in the killed process, so both were retried, as one pass again.
    assert [(o.label, o.state, o.retries) for o in outcomes] == [("constant", "finished", 1), ("step", "finished", 1)]
    for variant in VARIANTS:
        got = RunDirectory(tmp_path / "pool" / variant.label / "seed-0").read_metrics()
        expected = RunDirectory(tmp_path / "whole" / variant.label / "seed-0").read_metrics()
        assert [row["lr"] for row in got] == [row["lr"] for row in expected]
        assert [row["train_loss"] for row in got] == pytest.approx([row["train_loss"] for row in expected], abs=1e-4)
