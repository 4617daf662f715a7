import json
import math
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import without_timing

from lrlab import Trainer, train
from lrlab.cli import main
from lrlab.engine import find_lr
from lrlab.lrfinder import VALLEY_FRACTION, RunawayCheck, smooth, smoothing_window, suggest, sweep
from lrlab.runs import RunDirectory

FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_exponential_sweep_is_geometric_from_start_to_end():
    lrs = sweep(1e-6, 1.0, 7, "exp")
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1.0)
    assert all(b / a == pytest.approx(10.0) for a, b in pairwise(lrs))
    assert sweep(0.0001, 1.0, 5, "linear")[1] == pytest.approx(0.250075)


def lagging_ema(losses, beta=0.98):
    """The bias-corrected causal moving average lrlab smoothed with before: kept here only as the comparison."""
    average, smoothed = 0.0, []
    for index, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * loss
        smoothed.append(average / (1 - beta**index))
    return smoothed


def test_centred_smoothing_keeps_a_parabola_in_place_and_drops_a_lone_spike():
    x = np.linspace(-1, 1, 41)
    parabola = (1 + (x - 0.3) ** 2).tolist()
    smoothed = smooth(parabola, 9)
    assert np.argmin(smoothed) == np.argmin(parabola)
    assert smoothed[5:-5] == pytest.approx(parabola[5:-5], abs=1e-3)  # the median lifts a sharp bottom a little
    spiked = [1.0] * 41
    spiked[20] = 50.0
    assert smooth(spiked, 9) == pytest.approx([1.0] * 41)


FALL_STARTS_LR, MINIMUM_LR = 1e-3, 0.2


def synthetic_range_test(lrs, seed):
    """A loss flat at 2.3 until FALL_STARTS_LR, falling (a half cosine in log LR) to 1.2 at MINIMUM_LR,
    then rising; with batch-to-batch noise of 0.05, about what a real range test shows."""
    x, start, bottom = np.log10(lrs), math.log10(FALL_STARTS_LR), math.log10(MINIMUM_LR)
    progress = np.clip((x - start) / (bottom - start), 0, 1)
    clean = np.where(x <= bottom, 2.3 - 1.1 * (1 - np.cos(np.pi * progress)) / 2, 1.2 + 2 * (x - bottom) ** 2)
    return (clean + np.random.default_rng(seed).normal(0, 0.05, len(x))).tolist()


def true_suggestions():
    """Each rule on the noise-free curve, from its known points."""
    start, bottom = math.log10(FALL_STARTS_LR), math.log10(MINIMUM_LR)
    left_plateau = math.acos(0.8) / math.pi  # where a tenth of the fall is done
    valley = start + (left_plateau + VALLEY_FRACTION * (1 - left_plateau)) * (bottom - start)
    return {"valley": 10**valley, "steepest": math.sqrt(FALL_STARTS_LR * MINIMUM_LR), "minimum/10": MINIMUM_LR / 10}


@pytest.mark.parametrize("seed", range(5))
def test_suggestions_land_within_2x_of_the_truth_where_the_old_moving_average_missed_by_more(seed):
    lrs = sweep(1e-7, 10.0, 100, "exp")
    losses = synthetic_range_test(lrs, seed)
    truth = true_suggestions()
    off_by = lambda picks: {rule: max(picks[rule] / truth[rule], truth[rule] / picks[rule]) for rule in truth}
    assert all(factor <= 2 for factor in off_by(suggest(lrs, smooth(losses, smoothing_window(100)))).values())
    assert all(factor > 2 for factor in off_by(suggest(lrs, lagging_ema(losses))).values())


def test_the_sweep_stops_two_steps_after_the_loss_runs_away_where_the_old_average_took_ten():
    losses = [1.0] * 30 + [10.0] * 30
    check = RunawayCheck(diverge=4)
    stopped_at = next(step for step, loss in enumerate(losses) if check(loss))
    assert stopped_at == 32
    assert not RunawayCheck(diverge=4)(100.0)  # a huge first loss is the lowest so far, not a runaway
    lagging = lagging_ema(losses)
    assert next(step for step, value in enumerate(lagging) if value > 4 * min(lagging[: step + 1])) == 40


def test_suggestions_sit_where_each_rule_says_on_a_known_curve():
    lrs = sweep(1e-4, 1.0, 81, "exp")
    # Flat until 1e-3, falls linearly in log(LR) until 1e-1, then blows up.
    log = [math.log10(lr) for lr in lrs]
    curve = [2.0 if x <= -3 else 2.0 - (x + 3) if x <= -1 else 0.0 + 10 * (x + 1) for x in log]
    picks = suggest(lrs, curve)
    assert picks["minimum/10"] == pytest.approx(1e-2, rel=0.05)
    assert 1e-3 <= picks["steepest"] <= 1e-1
    # The plateau is at 2.0 and the minimum 0.0, so the valley starts at loss 1.8 (log LR -2.8).
    assert picks["valley"] == pytest.approx(10 ** (-2.8 + 0.45 * 1.8), rel=0.15)


def snapshot(trainer):
    return (
        {k: v.clone() for k, v in trainer.model.state_dict().items()},
        json.dumps(trainer.optimizer.state_dict(), default=str),
        torch.get_rng_state().clone(),
        trainer.model.training,
    )


@pytest.mark.parametrize("optimizer", ["sgd:lr=0.05,momentum=0.9", "adamw-schedulefree:lr=0.01"])
def test_the_range_test_leaves_model_optimizer_bn_statistics_and_rng_exactly_as_they_were(tiny_config, optimizer):
    trainer = Trainer(tiny_config(optimizer=optimizer))
    before = snapshot(trainer)
    running_mean_before = trainer.model[0][1].running_mean.clone()
    test = trainer.range_test(steps=30)
    after = snapshot(trainer)
    assert len(test.lrs) >= 10
    assert before[0].keys() == after[0].keys() and all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert torch.equal(trainer.model[0][1].running_mean, running_mean_before)  # BatchNorm statistics too
    assert before[1] == after[1] and torch.equal(before[2], after[2]) and before[3] == after[3]


def test_a_run_after_a_range_test_equals_a_run_without_one(tiny_config, tmp_path):
    plain = tiny_config(out=str(tmp_path / "plain"))
    train(plain)
    tested = Trainer(tiny_config(out=str(tmp_path / "tested")))
    tested.range_test(steps=20)
    tested.fit()
    assert without_timing(RunDirectory(plain.out).read_metrics()) == without_timing(RunDirectory(tested.config.out).read_metrics())


def test_the_test_stops_early_once_the_loss_runs_away(tiny_config):
    test = Trainer(tiny_config(model="mlp", width=16)).range_test(start=1e-4, end=1e4, steps=100)
    assert test.stopped_early and len(test.lrs) < 100
    assert test.lrs[-1] < 1e4


def test_outputs_and_the_printed_pick_agree(tiny_config, tmp_path, capsys):
    out = tmp_path / "lr"
    assert main(["find-lr", "--dataset", "digits", "--model", "cnn", "--width", "4", "--optimizer", "sgd:momentum=0.9",
                 "--steps", "40", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith("lr=")
    record = json.loads((out / "lr_find.json").read_text())
    assert float(printed[0][3:]) == pytest.approx(record["pick"], rel=1e-5)
    assert record["rule"] == "valley" and set(record["suggestions"]) == {"valley", "steepest", "minimum/10"}
    lines = (out / "lr_find.csv").read_text().splitlines()
    assert lines[0] == "repeat,lr,loss,smoothed_loss" and len(lines) > 11
    assert (out / "lr_find.png").stat().st_size > 5000 and (out / "lr_find.svg").exists()


def test_more_steps_than_batches_wraps_around_and_says_so(tiny_config, tmp_path):
    record = find_lr(tiny_config(limit_train=256, out=str(tmp_path / "lr")), steps=30)
    assert any("wrapped around the data" in note for note in record["notes"])


@pytest.mark.parametrize("arguments, says", [
    (["--start", "1", "--end", "0.1"], "must be below --end"),
    (["--start", "0"], "must both be positive"),
    (["--steps", "5"], "too few to read a slope"),
    (["--mode", "cubic"], "should be exp or linear"),
    (["--repeats", "0"], "should be at least 1"),
    (["--diverge", "1"], "should be above 1"),
])
def test_bad_range_test_settings_are_one_line_and_status_2(tmp_path, capsys, arguments, says):
    assert main(["find-lr", "--dataset", "digits", "--out", str(tmp_path / "lr"), *arguments]) == 2
    error = capsys.readouterr().err
    assert says in error and len(error.strip().splitlines()) == 1


def test_train_with_lr_auto_runs_the_test_first_and_trains_at_its_pick(tiny_config):
    config = tiny_config(optimizer="sgd:lr=auto,momentum=0.9", epochs=2)
    result = train(config)
    pick = json.loads((Path(config.out) / "lr_find.json").read_text())["pick"]
    assert result.state == "finished"
    assert RunDirectory(config.out).read_metrics()[0]["lr"] == pytest.approx(pick)
    assert train(config, resume=True).state == "finished"  # the pick is read back, not searched again


def test_compare_with_lr_auto_gives_every_run_the_same_picked_lr(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["compare", "--schedules", "constant", "cosine:T_max=2", "--epochs", "2", "--seeds", "0", "--lr", "auto",
                 "--dataset", "digits", "--width", "4", "--out", str(out)]) == 0
    pick = json.loads((out / "lr_find" / "lr_find.json").read_text())["pick"]
    for folder in ("constant", "CosineAnnealingLR-2"):
        assert RunDirectory(out / folder / "seed-0").read_metrics()[0]["lr"] == pytest.approx(pick, rel=1e-9)


@pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_picks_agree_within_a_factor_of_three_across_seeds_on_real_fashion_mnist(tiny_config, tmp_path):
    config = tiny_config(dataset="fashion-mnist", width=8, batch_size=128, limit_train=4000,
                         optimizer="sgd:momentum=0.9", out=str(tmp_path / "lr"))
    record = find_lr(config, repeats=3)
    assert record["spread"]["valley"]["spread_factor"] <= 3
    assert 1e-4 < record["pick"] < 1.0
