"""Finding and writing a schedule: what `lrlab schedules` lists, lengths that default to the run's,
preview and doctor sized from the data set, warmup-stable-decay (issue 25, items 9 and 10)."""

import math
import re

import pytest
import torch

from lrlab.cli import main
from lrlab.comparison import PRESETS
from lrlab.errors import UsageError
from lrlab.preview import doctor, preview
from lrlab.schedules import ScheduleDriver, parse_schedule


def test_schedules_command_lists_each_schedules_arguments_and_defaults(capsys):
    assert main(["schedules"]) == 0
    output = capsys.readouterr().out
    assert "step_size (required), gamma=0.1" in output
    assert "T_max=<run length>, eta_min=0.0" in output
    assert "total_steps=<run length>" in output and "pct_start=0.3" in output
    assert "cooldown=0.2, shape=1-sqrt" in output


@pytest.mark.parametrize("spec, filled, length", [
    ("cosine", "T_max", 10),                                   # per epoch: the run's epochs
    ("warmup(linear,epochs=2)+cosine", "T_max", 8),            # after the warmup
    ("onecycle:max_lr=0.1", "total_steps", 40),                # per batch: the run's steps
    ("wsd", "total_steps", 40),
])
def test_a_length_left_out_is_the_runs_length(spec, filled, length):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    driver = ScheduleDriver(parse_schedule(spec), optimizer, epochs=10, steps_per_epoch=4)
    assert getattr(driver.main, filled) == length


def test_plain_cosine_anneals_to_zero_over_the_run():
    rows = preview("cosine", epochs=10, steps_per_epoch=1, lr=1.0)
    assert rows[0].lr == 1.0 and rows[-1].lr == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 10)))
    assert doctor("cosine", 10) == []


def test_a_length_that_was_given_is_kept():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert ScheduleDriver("cosine:T_max=50", optimizer, 10, 4).main.T_max == 50
    with pytest.raises(UsageError, match="missing required argument step_size"):
        parse_schedule("step")


def test_doctor_reports_a_warmup_in_the_unit_it_was_written_in():
    [line] = doctor("warmup(linear,epochs=30)+cosine", epochs=20, steps_per_epoch=50)
    assert "the warmup takes 30 epochs but the whole run has 20 epochs" in line
    [line] = doctor("warmup(linear,steps=300)+cosine", epochs=2, steps_per_epoch=50)
    assert "the warmup takes 300 steps but the whole run has 100 steps" in line


def test_preview_and_doctor_take_the_steps_of_an_epoch_from_the_data_set(capsys):
    # digits: 1,437 training images, 144 held out for validation, batches of 64 -> 20 full + 1 of 13.
    assert main(["preview", "onecycle:max_lr=0.1", "--dataset", "digits", "--batch-size", "64", "--epochs", "2",
                 "--csv", "/dev/null"]) == 0
    captured = capsys.readouterr()
    assert "steps per epoch: 21 (digits: 1,293 training images" in captured.err
    assert main(["doctor", "warmup(linear,steps=5)+cosine", "--dataset", "digits", "--batch-size", "64", "--epochs", "2"]) == 0
    assert "steps per epoch: 21" in capsys.readouterr().err
    assert main(["preview", "constant", "--steps-per-epoch", "3", "--epochs", "2", "--quiet"]) == 0
    assert "steps per epoch" not in capsys.readouterr().err


def test_the_table_of_training_images_matches_what_the_sources_load():
    from lrlab.data import TRAIN_IMAGES, load_dataset

    for name in ("digits", "synthetic"):
        assert len(load_dataset(name).train_labels) == TRAIN_IMAGES[name]


@pytest.mark.parametrize("shape, expected", [
    ("linear", [1.0] * 8 + [1.0, 0.5]),
    ("1-sqrt", [1.0] * 8 + [1.0, 1 - math.sqrt(0.5)]),
])
def test_warmup_stable_decay_holds_then_cools_down_over_its_last_fraction(shape, expected):
    rows = preview(f"wsd:cooldown=0.2,shape={shape}", epochs=10, steps_per_epoch=1, lr=1.0)
    assert [r.lr for r in rows] == pytest.approx(expected)


def test_warmup_stable_decay_survives_a_checkpoint_and_is_in_the_modern_preset():
    parameter = torch.nn.Parameter(torch.zeros(1))
    driver = ScheduleDriver("wsd:cooldown=0.5", torch.optim.SGD([parameter], lr=1.0), 2, 5)
    for _ in range(7):
        driver.after_step()
    saved = torch.load(_round_trip(driver.state_dict()), weights_only=True)
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    again = ScheduleDriver("wsd:cooldown=0.5", optimizer, 2, 5)
    again.load_state_dict(saved)
    again.after_step()
    driver.after_step()
    assert again.main.get_last_lr() == driver.main.get_last_lr() and driver.main.get_last_lr()[0] < 1
    modern = {v.label: v.schedule for v in PRESETS["modern"].variants}
    assert parse_schedule(modern["warmup-stable-decay"]).class_name == "WarmupStableDecayLR"


def _round_trip(state):
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize("bad, says", [
    ("wsd:cooldown=0", "cooldown=0 should be in (0, 1]"),
    ("wsd:shape=cosine", "should be one of linear, 1-sqrt"),
    ("wsd:cooldwn=0.2", "did you mean 'cooldown'"),
])
def test_warmup_stable_decay_refuses_bad_arguments_in_one_line(bad, says):
    with pytest.raises(UsageError, match=re.escape(says)):
        parse_schedule(bad)


def test_doctor_reads_a_warmup_stable_decay_against_the_run():
    assert doctor("warmup(linear,epochs=1)+wsd", epochs=10, steps_per_epoch=20) == []
    [line] = doctor("wsd:cooldown=0.05@epoch", epochs=10)
    assert "the cooldown takes 1 epoch" in line
