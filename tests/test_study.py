"""A comparison as a study: tune each schedule with an equal, pruned budget on its own seeds, then
confirm on fresh seeds (lrlab.study, issue 21)."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import slow_epochs

import lrlab
from lrlab.errors import UsageError
from lrlab.runs import RunDirectory
from lrlab.stats import paired_difference
from lrlab.study import looks, rung_epochs, sequential_decisions, sequential_level
from lrlab.tuning import parse_lr_search, parse_ranged_schedule, read_record

# Three epochs pause at the rung of epoch 1; a wide LR range makes some trials lose there.
STUDY = {"dataset": "digits", "model": "mlp", "width": 8, "epochs": 3, "batch_size": 64, "device": "cpu",
         "schedules": ["constant", "step:step_size=1:2,gamma=0.2:0.8"], "search": "lr=0.001:1.0:log", "trials": 4,
         "seeds": [0, 1], "tuning_seeds": [100], "quiet": True}
CLI_STUDY = ["--dataset", "digits", "--model", "mlp", "--width", "8", "--epochs", "3", "--batch-size", "64",
             "--device", "cpu", "--schedules", "constant", "step:step_size=1:2,gamma=0.2:0.8",
             "--search", "lr=0.001:1.0:log", "--trials", "4", "--seeds", "0", "1", "--tuning-seeds", "100", "--quiet"]


def trial_states(out: Path) -> dict[str, list[tuple[str, int]]]:
    record = read_record(out)
    return {label: [(t.state, t.epochs) for t in arm["trials"]] for label, arm in record["arms"].items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One study trained in this process, the reference the other tests compare with."""
    out = tmp_path_factory.mktemp("study") / "reference"
    result = lrlab.compare(**STUDY, out=out)
    return out, result


def test_a_pruned_trial_stops_at_its_rung_keeps_its_files_and_is_pruned_in_optuna(reference):
    optuna = pytest.importorskip("optuna")
    out, _ = reference
    pruned = [(label, t) for label, arm in read_record(out)["arms"].items() for t in arm["trials"] if t.state == "pruned"]
    assert pruned, trial_states(out)
    for label, trial in pruned:
        run = RunDirectory(out / trial.path)
        assert len(run.read_metrics()) == rung_epochs(3, "sha")[0] < 3
        assert run.read_status()["state"] == "pruned"
        assert run.last_path.exists()
        stored = optuna.load_study(study_name=label, storage=f"sqlite:///{out / 'study.db'}").trials[trial.number]
        assert stored.state == optuna.trial.TrialState.PRUNED
    # Every schedule had the same budget of trials, and only complete trials are picked.
    record = read_record(out)
    assert {label: len(arm["trials"]) for label, arm in record["arms"].items()} == {"constant": 4, "StepLR tuned": 4}
    for label, confirmed in record["confirmed"].items():
        picked = record["arms"][label]["trials"][confirmed["trial"]]
        assert picked.state == "complete" and picked.epochs == 3


def test_tuning_and_confirmation_seeds_are_disjoint_in_every_runs_config(reference):
    out, _ = reference
    seeds = {"tuning": set(), "confirmation": set()}
    for config_path in out.rglob("config.yaml"):
        phase = "tuning" if "tuning" in config_path.relative_to(out).parts else "confirmation"
        seeds[phase].add(yaml.safe_load(config_path.read_text())["seed"])
    assert seeds == {"tuning": {100}, "confirmation": {0, 1}}


def test_the_confirmation_runs_are_the_picked_settings_trained_to_the_end(reference):
    out, result = reference
    record = read_record(out)
    manifest = json.loads((out / "comparison.json").read_text())
    confirmed = {v["label"]: v for v in manifest["variants"]}
    for label, pick in record["confirmed"].items():
        trial = record["arms"][label]["trials"][pick["trial"]]
        assert confirmed[label]["schedule"] == pick["schedule"]
        assert f"lr={trial.lr!r}" in confirmed[label]["optimizer"]
        for seed in (0, 1):
            assert [o.state for o in result.outcomes if o.label == label and o.seed == seed] == ["finished"]
    assert "StepLR tuned" in (out / "summary.md").read_text()


def test_the_study_storage_opens_with_optunas_own_load_study(reference):
    optuna = pytest.importorskip("optuna")
    out, _ = reference
    study = optuna.load_study(study_name="constant", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 4
    assert study.best_trial.number == read_record(out)["confirmed"]["constant"]["trial"]


def test_the_same_study_through_two_workers_makes_the_same_picks(reference, tmp_path):
    out, _ = reference
    lrlab.compare(**STUDY, out=tmp_path / "workers", workers=2)
    assert read_record(tmp_path / "workers")["confirmed"] == read_record(out)["confirmed"]
    assert trial_states(tmp_path / "workers") == trial_states(out)


def test_a_study_stopped_by_sigterm_resumes_without_retraining_what_ended(reference, tmp_path):
    out = tmp_path / "stopped"
    command = ["lrlab", "compare", *CLI_STUDY, "--out", str(out)]
    process = subprocess.Popen(command, env={**os.environ, **slow_epochs(0.3)}, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    # Stop it once the first round of rungs is judged: some trials have ended, others are paused.
    while time.time() < deadline and not any(
            s != "running" for states in (trial_states(out) if (out / "study.json").exists() else {}).values()
            for s, _ in states):
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    ended = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "tuning").rglob("metrics.csv")
             if RunDirectory(p.parent).read_status()["state"] in ("pruned", "finished")}
    assert ended
    from lrlab.cli import main

    assert main(["compare", *CLI_STUDY, "--out", str(out)]) == 0
    for path, (mtime, content) in ended.items():
        assert (path.stat().st_mtime_ns, path.read_bytes()) == (mtime, content)
    assert read_record(out)["confirmed"] == read_record(reference[0])["confirmed"]
    assert trial_states(out) == trial_states(reference[0])


@pytest.mark.parametrize("change, message", [
    ({"search": "lr=0.5:0.5"}, "empty"),
    ({"search": "lr=1.0:0.1"}, "reversed"),
    ({"search": "lr=0:0.1:log"}, "positive"),
    ({"search": "momentum=0.1:0.9"}, "takes lr"),
    ({"schedules": ["step:step_sise=1:3"]}, "step_sise"),
    ({"schedules": ["step:step_size=3:1"]}, "reversed"),
    ({"schedules": ["onecycle:max_lr=0.1:1"]}, "--search lr"),
    ({"trials": 0}, "--trials 0"),
    ({"tuning_seeds": [1]}, "both tuning and confirmation"),
    ({"study_storage": "nosuchdb://x"}, "--study-storage"),
    ({"lrs": [0.1, 0.2]}, "searches the LR itself"),
])
def test_bad_study_input_is_refused_before_anything_is_written(tmp_path, change, message):
    out = tmp_path / "refused"
    with pytest.raises(UsageError, match=message) as refused:
        lrlab.compare(**{**STUDY, **change}, out=out)
    assert "\n" not in str(refused.value)
    assert not out.exists() or not any(out.iterdir())


def test_a_study_folder_made_with_another_search_space_is_refused_and_left_as_it_was(reference, capsys):
    out, _ = reference
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    from lrlab.cli import main

    changed = [a if a != "lr=0.001:1.0:log" else "lr=0.01:1.0:log" for a in CLI_STUDY]
    assert main(["compare", *changed, "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "search_lr" in error[0]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_ranges_in_a_spec_keep_whole_numbers_whole_and_fill_back_into_a_plain_spec():
    ranged = parse_ranged_schedule("warmup(linear,epochs=1:3)+step:step_size=2:8,gamma=0.1:0.7:log@epoch")
    assert [(r.name, r.low, r.high, r.log, r.integer) for r in ranged.ranges] == [
        ("epochs", 1, 3, False, True), ("step_size", 2, 8, False, True), ("gamma", 0.1, 0.7, True, False)]
    assert ranged.at({"epochs": 2, "step_size": 5, "gamma": 0.25}) == "warmup(linear,epochs=2)+step:step_size=5,gamma=0.25@epoch"
    assert parse_lr_search(["lr=auto"]) == "auto"


def test_rungs_grow_by_three_from_a_ninth_of_the_run():
    assert rung_epochs(20, "sha") == [2, 6, 18]
    assert rung_epochs(20, "hyperband") == [2, 6, 18]
    assert rung_epochs(3, "sha") == [1]
    assert rung_epochs(20, "none") == []
    assert looks(3, 10) == [3, 6, 9, 10] and looks(3, None) == [3]


def _null_comparisons(rng, comparisons: int, arms: int, seeds: int) -> np.ndarray:
    """Per-seed final accuracies of `arms` candidates and a baseline (last), all with the same true mean:
    a shared seed effect (weights and batches are paired) plus each run's own noise, in points/100."""
    seed_effect = rng.normal(0, 0.004, (comparisons, 1, seeds))
    own = rng.normal(0, 0.003, (comparisons, arms + 1, seeds))
    return 0.9 + seed_effect + own


def _peeking_false_real_rate(level: float, rng, comparisons: int = 1000, arms: int = 3, first: int = 3,
                             most: int = 12) -> float:
    """Share of null comparisons in which any arm is called real at any look, looking after every round."""
    accuracies = _null_comparisons(rng, comparisons, arms, most)
    counts = looks(first, most)
    false_real = 0
    for table in accuracies:
        open_arms = set(range(arms))
        for count in counts:
            p_values = {str(a): paired_difference(list(table[a, :count]), list(table[arms, :count])).p_value
                        for a in open_arms}
            decisions = sequential_decisions(p_values, {}, level)
            if any(d == "real" for d in decisions.values()):
                false_real += 1
                break
    return false_real / comparisons


def test_adding_seeds_and_looking_after_every_round_keeps_false_real_at_five_percent():
    # 1,000 null comparisons (3 schedules against a baseline, all equal), seeds added 3 at a time up to
    # 12 with a look after every round. The Monte Carlo standard error of a 5% rate over 1,000 is 0.7
    # points: the bound allows three of them.
    rng = np.random.default_rng(0)
    corrected = _peeking_false_real_rate(sequential_level(3, 12), rng)
    assert corrected <= 0.05 + 3 * (0.05 * 0.95 / 1000) ** 0.5
    # The simulation can see what the split guards against: testing each look at the full 5% does inflate it.
    naive = _peeking_false_real_rate(0.05, np.random.default_rng(0))
    assert naive > corrected and naive > 0.05


def test_more_seeds_go_only_to_the_schedules_still_undecided_at_the_last_look(tmp_path):
    out = tmp_path / "more-seeds"
    lrlab.compare(**{**STUDY, "trials": 1, "prune": "none", "epochs": 2, "seeds": [0, 1, 2], "max_seeds": 5,
                     "schedules": ["constant", "step:step_size=1,gamma=0.1", "exponential:gamma=0.9"]}, out=out)
    record = read_record(out)
    sequential = record["sequential"]
    assert sequential["looks"] == [3, 5] and sequential["level"] == pytest.approx(0.05 / 2)
    first_look = sequential["history"][0]
    assert first_look["seeds"] == 3
    undecided = {label for label, decision in first_look["decisions"].items() if decision == "open"}
    assert undecided, first_look  # the setting is chosen so that the first look leaves something to add seeds to
    manifest = json.loads((out / "comparison.json").read_text())
    trained = {v["label"]: sorted(int(p.name.split("-")[1]) for p in (out / v.get("folder", v["label"])).glob("seed-*"))
               for v in manifest["variants"]}
    added = [s for s in manifest["seeds"] if s not in (0, 1, 2)]
    assert not set(added) & {100}  # never a tuning seed
    assert added
    # The report judges at the per-look level too, and says why.
    assert "judged at 2.5%" in (out / "summary.md").read_text()
    for label, seeds in trained.items():
        assert seeds == ([0, 1, 2, *added] if label == "constant" or label in undecided else [0, 1, 2]), (label, first_look)


def test_the_report_opens_with_the_tuning_table_curves_and_trials_against_lr(reference):
    out, _ = reference
    report = (out / "report.html").read_text()
    assert report.index("<h2>Tuning</h2>") < report.index("<h2>Confirmation</h2>") < report.index("<h2>Summary</h2>")
    assert report.count('alt="tuning_') == 2
    assert (out / "plots" / "tuning_curves.png").stat().st_size > 0
    assert (out / "plots" / "tuning_trials_vs_lr.svg").stat().st_size > 0
    summary = (out / "summary.md").read_text()
    record = read_record(out)
    for label, arm in record["arms"].items():
        row = next(line for line in summary.splitlines() if line.startswith(f"| {label} |"))
        assert f"| {len(arm['trials'])} | {arm['pruned']} | {arm['failed']} | {arm['epochs_trained']} |" in row


def test_lr_auto_searches_a_decade_centred_on_the_range_tests_pick_with_tpe_and_hyperband(tmp_path):
    out = tmp_path / "auto"
    lrlab.compare(**{**STUDY, "search": "lr=auto", "sampler": "tpe", "prune": "hyperband", "trials": 2, "epochs": 1,
                     "schedules": ["constant"], "seeds": [0, 1]}, out=out)
    pick = json.loads((out / "lr_find" / "lr_find.json").read_text())["pick"]
    record = read_record(out)
    low, high = (float(end) for end in record["lr_range"].removeprefix("lr=").removesuffix(":log").split(":"))
    assert low * high == pytest.approx(pick ** 2, rel=1e-3) and high / low == pytest.approx(10, rel=1e-3)
    assert all(low <= t.lr <= high for t in record["arms"]["constant"]["trials"])
    assert record["settings"]["sampler"] == "tpe" and record["settings"]["prune"] == "hyperband"
