"""What a run leaves to read and how it goes on (issue 25, item 8): a plain-text log in every run folder,
no progress-bar frames in piped output, `compare --overwrite`, and `--resume --epochs N` to train longer."""

from pathlib import Path

import pytest
from helpers import without_timing

import lrlab
from lrlab.cli import main
from lrlab.errors import UsageError
from lrlab.runs import RunDirectory


@pytest.fixture
def tiny(tiny_config):
    def make(**overrides):
        return tiny_config(**{"model": "mlp", "epochs": 2, "limit_train": 256, **overrides})

    return make


def test_every_run_folder_has_a_plain_text_log(tiny):
    config = tiny(schedule="step:step_size=1,gamma=0.5")
    lrlab.train(config)
    lines = (Path(config.out) / "log.txt").read_text().splitlines()
    assert "started epoch 0 of 2: schedule step:step_size=1,gamma=0.5" in lines[0] and lines[0].endswith(", alone")
    assert [line.split("  ", 1)[1][:11] for line in lines[1:3]] == ["epoch   1/2", "epoch   2/2"]
    assert lines[-1].endswith("finished at epoch 2")
    assert "\r" not in (Path(config.out) / "log.txt").read_text()


def test_the_log_says_a_run_trained_in_a_group(tiny, tmp_path):
    # A run trained in a group drifts from the same run alone in the last bits: its log says which it was.
    from lrlab.group import train_group

    configs = [tiny(schedule=spec, out=str(tmp_path / name)) for name, spec in (("a", "constant"), ("b", "exponential:gamma=0.9"))]
    train_group(configs)
    for config in configs:
        first = (Path(config.out) / "log.txt").read_text().splitlines()[0]
        assert first.endswith(", in a group of 2 runs sharing a pass")


def test_progress_piped_to_a_file_has_no_carriage_return_frames(tmp_path, capsys):
    # capsys stands in for a pipe: not a terminal, as `lrlab train ... 2> log` sees it.
    assert main(["train", "--dataset", "digits", "--model", "mlp", "--width", "4", "--epochs", "1", "--limit-train", "256",
                 "--device", "cpu", "--out", str(tmp_path / "run")]) == 0
    stderr = capsys.readouterr().err
    assert "\r" not in stderr and "epoch   1/1" in stderr


def test_resume_with_more_epochs_trains_a_finished_run_longer_as_if_it_had_been_that_long(tiny, tmp_path):
    schedule = "step:step_size=1,gamma=0.5"
    extended = tiny(schedule=schedule, out=str(tmp_path / "extended"))
    lrlab.train(extended)
    result = lrlab.train(tiny(schedule=schedule, out=extended.out, epochs=3), resume=True)
    assert result.state == "finished" and result.epochs_completed == 3
    whole = tiny(schedule=schedule, out=str(tmp_path / "whole"), epochs=3)
    lrlab.train(whole)
    assert without_timing(RunDirectory(extended.out).read_metrics()) == without_timing(RunDirectory(whole.out).read_metrics())
    assert lrlab.load_config(Path(extended.out) / "config.yaml").epochs == 3
    assert "extended from 2 to 3 epochs" in (Path(extended.out) / "log.txt").read_text()


@pytest.mark.parametrize("schedule, why", [
    ("cosine", "its T_max is the run's length"),
    ("onecycle:max_lr=0.1", "its total_steps is the run's length"),
    ("onecycle:max_lr=0.1,total_steps=20", "cannot step past it"),
])
def test_resume_with_more_epochs_is_refused_where_the_schedule_depends_on_the_runs_length(tiny, schedule, why):
    config = tiny(schedule=schedule, epochs=1)
    lrlab.train(config)
    with pytest.raises(UsageError, match="cannot be trained longer") as refused:
        lrlab.train(tiny(schedule=schedule, epochs=2), resume=True)
    assert why in str(refused.value) and "train a new run with --epochs 2" in str(refused.value)


def test_compare_overwrite_replaces_the_earlier_comparison(tmp_path):
    options = {"dataset": "digits", "model": "mlp", "width": 4, "limit_train": 256, "device": "cpu", "quiet": True,
               "out": str(tmp_path / "cmp"), "seeds": [0]}
    lrlab.compare(schedules=["constant", "step:step_size=1,gamma=0.5"], epochs=1, **options)
    with pytest.raises(UsageError, match="different batch_size"):
        lrlab.compare(schedules=["constant"], epochs=1, batch_size=32, **options)
    result = lrlab.compare(schedules=["constant"], epochs=1, batch_size=32, overwrite=True, **options)
    assert [row["schedule"] for row in result.summary] == ["constant"]
    assert result.comparison.base_config["batch_size"] == 32
    assert sorted(p.name for p in (tmp_path / "cmp").iterdir() if p.is_dir()) == ["constant", "plots"]


def test_removing_a_comparison_keeps_the_users_files(tmp_path):
    from lrlab.comparison import remove_comparison

    options = {"dataset": "digits", "model": "mlp", "width": 4, "limit_train": 256, "device": "cpu", "quiet": True,
               "out": str(tmp_path / "cmp"), "seeds": [0], "epochs": 1}
    lrlab.compare(schedules=["constant"], **options)
    (tmp_path / "cmp" / "notes.txt").write_text("mine")
    (tmp_path / "cmp" / "constant" / "seed-0" / "mine.py").write_text("")
    remove_comparison(tmp_path / "cmp")
    left = sorted(str(p.relative_to(tmp_path / "cmp")) for p in (tmp_path / "cmp").rglob("*"))
    assert left == ["constant", "constant/seed-0", "constant/seed-0/mine.py", "notes.txt"]
