"""Results a script can use (issue 25, item 6): numbers in percent, None where a figure does not exist,
a table for pandas or a CSV file, the LR range test in the API, and one unit for accuracies."""

import csv
import math

import pytest

import lrlab

TINY = {"dataset": "digits", "model": "mlp", "width": 4, "epochs": 1, "batch_size": 64, "limit_train": 256,
        "device": "cpu", "quiet": True}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("results") / "cmp"
    return lrlab.compare(schedules=["constant", "step:step_size=1,gamma=0.5"], seeds=[0], target_acc=50, out=str(out), **TINY)


def test_the_summary_holds_numbers_in_percent_and_none_where_a_figure_does_not_exist(result):
    baseline, step = result.summary
    assert isinstance(baseline["final_acc_mean"], float) and 0 <= baseline["final_acc_mean"] <= 100
    assert baseline["final_acc_mean"] == pytest.approx(100 * result.comparison.results[0].final_acc.mean)
    assert baseline["diff_vs_baseline"] is None  # the baseline has no difference from itself
    assert isinstance(step["diff_vs_baseline"], float)
    assert step["final_acc_ci95_low"] is None  # one seed: no interval, rather than NaN or a string
    assert baseline["seeds"] == 1 and baseline["seeds_finished"] == 1 and baseline["target_acc"] == 50.0
    assert not any(isinstance(value, float) and math.isnan(value) for row in result.summary for value in row.values())


def test_the_summary_goes_to_csv_and_to_pandas(result, tmp_path):
    rows = list(csv.DictReader(result.to_csv(tmp_path / "summary.csv").open()))
    assert [r["schedule"] for r in rows] == ["constant", result.summary[1]["schedule"]]
    assert float(rows[0]["final_acc_mean"]) == pytest.approx(result.summary[0]["final_acc_mean"])
    assert rows[0]["diff_vs_baseline"] == ""
    pandas = pytest.importorskip("pandas")
    frame = result.to_pandas()
    assert isinstance(frame, pandas.DataFrame) and list(frame["schedule"]) == ["constant", result.summary[1]["schedule"]]


def test_target_accuracy_is_given_in_percent_and_a_fraction_is_refused_with_the_fix(tmp_path, result):
    assert result.comparison.target_acc == pytest.approx(0.5)
    with pytest.raises(lrlab.UsageError, match=r"0.9 looks like a fraction: give 90"):
        lrlab.compare(schedules=["constant"], target_acc=0.9, out=str(tmp_path / "c"), **TINY)


def test_find_lr_is_part_of_the_api(tmp_path):
    found = lrlab.find_lr(steps=30, out=str(tmp_path / "lr"), **{k: v for k, v in TINY.items() if k != "epochs"})
    assert found.lr > 0 and float(found) == found.lr and found.rule in found.suggestions
    assert found.plot_path.exists() and (tmp_path / "lr" / "lr_find.json").exists()
