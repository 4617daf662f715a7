import csv
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import without_timing

from lrlab import RunConfig, Trainer, train
from lrlab.cli import main
from lrlab.aggregate import Comparison, ScheduleResult, aggregate
from lrlab.comparison import PRESETS, Variant, safe_folder_name
from lrlab.grid import (
    at_lr,
    run_comparison,
    run_config,
    variants_from_specs,
)
from lrlab.errors import UsageError
from lrlab.preview import doctor, preview
from lrlab.report import build_report, verdict
from lrlab.runs import RunDirectory
from lrlab.stats import PairedDifference, Summary, seeds_to_resolve

CHROMIUM = shutil.which("chromium")


@pytest.fixture
def base(tmp_path):
    return RunConfig(dataset="digits", model="cnn", width=4, epochs=3, batch_size=64, limit_train=512,
                     optimizer="sgd:lr=0.05,momentum=0.9", out=str(tmp_path / "cmp"), quiet=True)


def test_grid_writes_one_run_per_schedule_and_seed_with_paired_batches(base, tmp_path):
    variants = variants_from_specs(["constant", "step:step_size=1,gamma=0.5"])
    outcomes = run_comparison(base, variants, [0, 1], base.out, show_progress=False)
    assert [(o.label, o.seed, o.state) for o in outcomes] == [
        ("constant", 0, "finished"), ("constant", 1, "finished"),
        ("StepLR(1, 0.5)", 0, "finished"), ("StepLR(1, 0.5)", 1, "finished")]
    out = Path(base.out)
    # Epoch 1 runs at the same LR under both schedules: same weights, same batches, so identical numbers.
    for seed in (0, 1):
        constant = RunDirectory(out / "constant" / f"seed-{seed}").read_steps()
        step = RunDirectory(out / "StepLR-1-0.5" / f"seed-{seed}").read_steps()  # label StepLR(1, 0.5): a shell-safe folder
        first_epoch = lambda rows: [r["loss"] for r in rows if r["epoch"] == 1]
        assert first_epoch(constant) == first_epoch(step)
    seed_0 = RunDirectory(out / "constant" / "seed-0").read_steps()
    seed_1 = RunDirectory(out / "constant" / "seed-1").read_steps()
    assert seed_0[0]["loss"] != seed_1[0]["loss"]


def test_a_comparison_stopped_half_way_continues_where_it_stopped(base, tmp_path):
    variants = variants_from_specs(["constant", "cosine:T_max=3"])
    reference = replace(base, out=str(tmp_path / "reference"))
    # One run a pass: the test compares a run resumed alone with the same run in the reference, bit for bit.
    run_comparison(reference, variants, [0], reference.out, show_progress=False, runs_per_pass=1)
    run_comparison(base, variants[:1], [0], base.out, show_progress=False, runs_per_pass=1)
    finished = RunDirectory(Path(base.out) / "constant" / "seed-0")
    finished_bytes = finished.metrics_path.read_bytes()

    def stop_after_first_epoch(epoch, metrics):
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C during the second run

    with pytest.raises(KeyboardInterrupt):
        Trainer(run_config(base, variants[1], 0, Path(base.out)), on_epoch=stop_after_first_epoch).fit()
    half = RunDirectory(Path(base.out) / "CosineAnnealingLR-3" / "seed-0")
    assert len(half.read_metrics()) == 1 and half.read_status()["state"] == "interrupted"
    run_comparison(base, variants, [0], base.out, show_progress=False, runs_per_pass=1)
    assert finished.metrics_path.read_bytes() == finished_bytes  # the finished run was skipped, not redone
    expected = RunDirectory(Path(reference.out) / "CosineAnnealingLR-3" / "seed-0").read_metrics()
    assert without_timing(half.read_metrics()) == without_timing(expected)


def test_a_diverged_run_is_reported_and_not_averaged_in(base):
    variants = [Variant("sane", "constant"), Variant("explodes", "exponential:gamma=1e10")]
    config = replace(base, model="mlp", width=16)
    outcomes = run_comparison(config, variants, [0, 1], base.out, show_progress=False)
    assert {o.state for o in outcomes if o.label == "explodes"} == {"diverged"}
    comparison = build_report(base.out)
    exploding = next(r for r in comparison.results if r.label == "explodes")
    assert exploding.final_acc is None and exploding.difference is None
    assert "explodes (seed 0 diverged, seed 1 diverged)" in verdict(comparison)
    summary = (Path(base.out) / "summary.csv").read_text()
    assert re.search(r"explodes,exponential:gamma=1e10,,0/2,2,0,n/a", summary)


def test_article_preset_is_the_articles_experiment_exactly():
    preset = PRESETS["article"]
    assert preset.epochs == 20
    assert [v.schedule for v in preset.variants] == [
        "constant", "step:step_size=5,gamma=0.5", "cosine:T_max=50",
        "plateau:mode=min,factor=0.5,patience=5,monitor=test_loss", "exponential:gamma=0.95"]
    from lrlab.schedules import parse_schedule

    assert not any(parse_schedule(v.schedule).per_step for v in preset.variants)  # once per epoch, after training
    assert preset.val_fraction == 0  # it chose on test data; the report says so


def test_a_comparison_without_validation_says_its_choices_on_test_data_are_optimistic(base):
    run_comparison(replace(base, val_fraction=0), variants_from_specs(["constant"]), [0], base.out, show_progress=False)
    comparison = build_report(base.out)
    assert comparison.selected_on == "test" and "optimistic" in verdict(comparison)
    assert "chosen on test: optimistic" in (Path(base.out) / "summary.md").read_text()


def test_the_best_epoch_column_is_test_accuracy_at_the_best_validation_epoch(base):
    run_comparison(base, variants_from_specs(["constant"]), [0, 1], base.out, show_progress=False)
    comparison = build_report(base.out)
    result = comparison.results[0]
    expected = []
    for seed in (0, 1):
        rows = RunDirectory(Path(base.out) / "constant" / f"seed-{seed}").read_metrics()
        expected.append(max(rows, key=lambda row: row["val_acc"])["test_acc"])
    assert result.best_acc.mean == pytest.approx(sum(expected) / 2)
    assert comparison.selected_on == "validation" and "optimistic" not in verdict(comparison)
    assert "test acc at best-val epoch" in (Path(base.out) / "summary.md").read_text()


def test_modern_preset_includes_schedule_free_adamw_and_every_spec_is_valid():
    from lrlab.optimizers import SCHEDULE_FREE, parse_optimizer
    from lrlab.schedules import parse_schedule

    preset = PRESETS["modern"]
    for variant in preset.variants:
        parse_schedule(variant.schedule)
        if variant.optimizer:
            assert parse_optimizer(variant.optimizer).name in SCHEDULE_FREE
    assert any(parse_schedule(v.schedule).class_name == "OneCycleLR" for v in preset.variants)


def test_one_seed_says_no_uncertainty_can_be_given(base):
    run_comparison(base, variants_from_specs(["constant", "cosine:T_max=3"]), [0], base.out, show_progress=False)
    comparison = build_report(base.out)
    assert "no uncertainty can be given" in verdict(comparison)
    assert "n/a (one seed)" in (Path(base.out) / "summary.md").read_text()


def test_a_schedule_that_is_clearly_better_is_called_better_and_only_then(base):
    # An LR 1000x too small barely trains: the sane LR must be judged better beyond noise.
    variants = [Variant("tiny-lr", "constant", "sgd:lr=0.00005"), Variant("sane", "constant")]
    run_comparison(base, variants, [0, 1, 2], base.out, show_progress=False)
    comparison = build_report(base.out)
    text = verdict(comparison)
    assert "\n- sane: better, +" in text and "seeds and test images both counted" in text
    sane = next(r for r in comparison.results if r.label == "sane")
    assert sane.difference.ci_low > 0 and sane.difference.p_value < 0.05


def test_report_files_exist_and_user_text_is_escaped(base):
    hostile = "<script>alert(1)</script>"
    variants = [Variant("constant", "constant"), Variant("x<img src=y onerror=alert(2)>", "cosine:T_max=3")]
    run_comparison(replace(base, data_dir=hostile), variants, [0], base.out, show_progress=False)
    build_report(base.out)
    out = Path(base.out)
    for name in ("summary.csv", "summary.md", "report.html"):
        assert (out / name).exists()
    for plot in ("lr_by_epoch", "lr_by_step", "test_acc", "test_loss", "train_loss", "final_acc"):
        assert (out / "plots" / f"{plot}.png").stat().st_size > 1000 and (out / "plots" / f"{plot}.svg").exists()
    page = (out / "report.html").read_text()
    assert hostile not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=y" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing remote


def test_report_configuration_shows_what_varies_and_what_every_run_shares(base):
    variants = [Variant("constant", "constant"), Variant("adam", "cosine:T_max=3", "adam:lr=0.001")]
    run_comparison(replace(base, epochs=1), variants, [0, 1], base.out, show_progress=False)
    build_report(base.out)
    page = (Path(base.out) / "report.html").read_text()
    section = page.split("<h2>Configuration</h2>", 1)[1].split("</pre>", 1)[0]
    varies, shared = section.split("Shared by every run:")
    assert "constant: schedule constant  with optimizer sgd:lr=0.05,momentum=0.9" in varies
    assert "adam: schedule cosine:T_max=3  with optimizer adam:lr=0.001" in varies and "seeds: 0, 1" in varies
    assert "dataset: &quot;digits&quot;" in shared and "epochs: 1" in shared
    assert not re.search(r"\b(schedule|optimizer|seed|quiet|out):", shared)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_report_loads_in_headless_chromium_with_its_table_and_images(base, tmp_path):
    run_comparison(base, variants_from_specs(["constant", "cosine:T_max=3"]), [0, 1], base.out, show_progress=False)
    build_report(base.out)
    report = Path(base.out) / "report.html"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120, check=False).stdout
    plots = len(list((Path(base.out) / "plots").glob("*.png")))
    assert dom.count("<tr>") == 3 and plots >= 6 and dom.count('src="data:image/png;base64,') == plots
    screenshot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={screenshot}", "--window-size=1200,2000", report.as_uri()],
                   capture_output=True, timeout=120, check=False)
    assert screenshot.stat().st_size > 20_000  # a blank page compresses to a few kilobytes


def test_report_command_rebuilds_from_the_runs(base, capsys):
    run_comparison(base, variants_from_specs(["constant"]), [0], base.out, show_progress=False)
    build_report(base.out)
    (Path(base.out) / "summary.md").unlink()
    assert main(["report", base.out]) == 0
    assert (Path(base.out) / "summary.md").exists()


def test_report_of_a_folder_without_a_comparison_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="holds no comparison"):
        aggregate(tmp_path)


def test_compare_command_runs_the_grid_and_prints_the_verdict(tmp_path, capsys):
    status = main(["compare", "--schedules", "constant", "step:step_size=1,gamma=0.5", "--epochs", "2", "--seeds", "0", "1",
                   "--dataset", "digits", "--width", "4", "--limit-train", "256", "--out", str(tmp_path / "c")])
    assert status == 0
    output = capsys.readouterr().out
    assert "Highest mean final test accuracy" in output and "report.html" in output


@pytest.mark.parametrize("spec, label", [
    ("step:step_size=5,gamma=0.5", "StepLR(5, 0.5)"),
    ("cosine:T_max=50", "CosineAnnealingLR(50)"),
    ("plateau:patience=3", "ReduceLROnPlateau(min, patience=3, monitor=val_loss)"),
    ("warmup(linear,epochs=2)+cosine:T_max=18", "warmup(linear, epochs=2)+CosineAnnealingLR(18)"),
    ("exponential:gamma=0.9@step", "ExponentialLR(0.9)@step"),
    ("lambda:lr_lambda=1/(epoch+1)", "LambdaLR(1_(epoch+1))"),
    ("constant", "constant"),
])
def test_user_specs_get_readable_labels_and_run_folders_like_the_torch_call(spec, label):
    assert variants_from_specs([spec])[0].label == label


TINY_COMPARE = ["compare", "--schedules", "constant", "--epochs", "1", "--seeds", "0", "--dataset", "digits", "--width", "4",
                "--limit-train", "128"]


def test_a_comparison_continues_with_other_runtime_only_settings_as_train_resume_does(tmp_path, capsys):
    out = str(tmp_path / "c")
    assert main([*TINY_COMPARE, "--out", out]) == 0
    assert main([*TINY_COMPARE, "--out", out, "--data-workers", "0", "--memory-budget", "1G", "--device", "cpu"]) == 0
    assert main([*TINY_COMPARE, "--out", out, "--width", "8"]) == 2
    assert "different width" in capsys.readouterr().err


@pytest.fixture
def terminal(capfd, monkeypatch):
    """stderr (as capfd captures it) taken for a terminal: the progress bars draw only there."""
    import sys

    monkeypatch.setattr(type(sys.stderr), "isatty", lambda self: True)


def test_compare_quiet_shows_no_progress_bar(tmp_path, capfd, terminal):
    assert main([*TINY_COMPARE, "--out", str(tmp_path / "c"), "--quiet"]) == 0
    assert "comparison" not in capfd.readouterr().err
    assert main([*TINY_COMPARE, "--out", str(tmp_path / "d")]) == 0
    assert "comparison" in capfd.readouterr().err


@pytest.mark.parametrize("arguments, says", [
    (["--schedules", "constant", "--preset", "article"], "either --preset NAME or --schedules"),
    (["--schedules", "constant", "constant"], "listed twice"),
    (["--schedules", "constant", "--seeds", "0", "0"], "seed is listed twice"),
    (["--schedules", "constant", "--baseline", "nope"], "is not one of the schedules"),
    (["--schedules", "stpe:step_size=2"], "did you mean 'step'"),
    (["--schedules", "constant", "--target-acc", "0.93"], "looks like a fraction: give 93"),
])
def test_compare_bad_input_is_one_line_and_status_2(tmp_path, capsys, arguments, says):
    assert main(["compare", *arguments, "--dataset", "digits", "--out", str(tmp_path / "c")]) == 2
    error = capsys.readouterr().err
    assert says in error and len(error.strip().splitlines()) == 1


def test_grid_progress_shows_run_epoch_and_time_left(base, capfd, terminal):
    run_comparison(base, variants_from_specs(["constant"]), [0], base.out, show_progress=True)
    error = capfd.readouterr().err
    assert "pass 1/1: constant seed 0, epoch 3" in error and "<" in error  # tqdm's elapsed<remaining
    assert "lrlab: 1 run, one at a time (auto: no two runs of a seed can share a pass)" in error


@pytest.mark.parametrize("spec", ["step:step_size=1,gamma=0.5", "onecycle:max_lr=0.1", "warmup(linear,epochs=1)+cosine:T_max=2",
                                  "plateau:factor=0.5,patience=0,threshold=0.9"])
def test_preview_matches_what_training_logs_exactly(tiny_config, spec):
    config = tiny_config(schedule=spec, epochs=3)
    trainer = Trainer(config)
    trainer.fit()
    logged = RunDirectory(config.out).read_steps()
    metrics = [row["test_loss"] for row in RunDirectory(config.out).read_metrics()]
    predicted = preview(spec, 3, trainer.steps_per_epoch, lr=0.05, metric_per_epoch=metrics)
    assert [(r.step, r.epoch, r.lr) for r in predicted] == [(row["step"], row["epoch"], row["lr"]) for row in logged]


def test_plateau_preview_assumes_a_flat_metric_by_default():
    rows = preview("plateau:factor=0.5,patience=1", 6, 1, lr=1.0)
    assert [r.lr for r in rows] == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25]


def test_preview_command_writes_csv_and_plot(tmp_path, capsys):
    status = main(["preview", "cosine:T_max=50", "exponential:gamma=0.95", "--epochs", "20", "--lr", "0.05",
                   "--steps-per-epoch", "235", "--plot", str(tmp_path / "lr.png"), "--csv", str(tmp_path / "lr.csv")])
    assert status == 0
    lines = (tmp_path / "lr.csv").read_text().splitlines()
    assert lines[0] == "spec,step,epoch,lr" and len(lines) == 1 + 2 * 20 * 235
    assert (tmp_path / "lr.png").stat().st_size > 5000
    assert "0.377" in capsys.readouterr().out  # 0.95 ** 19: the LR of the 20th epoch relative to the start


@pytest.mark.parametrize("spec, epochs, says", [
    ("cosine:T_max=50", 20, "longer than the run (20 epochs); the LR only falls and ends at 0.68"),
    ("cosine:T_max=5", 20, "climbs back up"),
    ("step:step_size=25", 20, "never fires"),
    ("multistep:milestones=[15,40]", 20, "fires only once"),
    ("plateau:patience=8", 20, "at most 2 chances"),
    ("onecycle:max_lr=0.1,total_steps=10", 20, "fails at step 11"),
    ("warmup(linear,epochs=15)+cosine:T_max=5", 20, "the warmup takes"),
    ("exponential:gamma=0.99", 20, "ends at 0.83 of its start"),
    ("exponential:gamma=0.5", 20, "the last epochs barely train"),
])
def test_doctor_warns_in_one_line_where_a_schedule_surprises(spec, epochs, says):
    lines = doctor(spec, epochs)
    assert any(says in line for line in lines), lines
    assert all("\n" not in line for line in lines)


@pytest.mark.parametrize("spec", ["step:step_size=5,gamma=0.5", "cosine:T_max=20", "onecycle:max_lr=0.1", "constant",
                                  "warmup(linear,epochs=2)+cosine:T_max=18"])
def test_doctor_is_quiet_about_sensible_schedules(spec):
    assert doctor(spec, 20, 10) == []


def test_train_prints_doctors_warnings_before_it_starts(tiny_config, capsys):
    train(tiny_config(schedule="cosine:T_max=50", quiet=False, epochs=1))
    error = capsys.readouterr().err
    assert error.index("lrlab: note: cosine:T_max=50") < error.index("epoch   1/1")


def test_doctor_command_exits_1_when_it_warns(capsys):
    assert main(["doctor", "cosine:T_max=50", "--epochs", "20"]) == 1
    assert main(["doctor", "cosine:T_max=20", "--epochs", "20"]) == 0


def _lrlab_imports_at_module_level(module: str) -> set[str]:
    """Every lrlab module `module` loads when imported, following module-level imports only."""
    import ast
    import importlib.util

    seen, waiting = set(), [module]
    while waiting:
        name = waiting.pop()
        if name in seen:
            continue
        seen.add(name)
        tree = ast.parse(Path(importlib.util.find_spec(name).origin).read_text())
        for node in tree.body:
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            waiting += [n for n in names if n.startswith("lrlab.")]
    return seen


def test_rebuilding_a_report_imports_neither_the_grid_runner_nor_the_engine():
    loaded = _lrlab_imports_at_module_level("lrlab.report")
    assert "lrlab.aggregate" in loaded
    assert not {"lrlab.grid", "lrlab.engine", "lrlab.executors"} & loaded


def test_an_lr_sets_the_optimizers_lr_and_the_peak_of_one_cycle_like_schedules():
    step = at_lr(Variant("step", "step:step_size=2,gamma=0.5"), 0.3, "sgd:lr=0.05,momentum=0.9")
    assert step.schedule == "step:step_size=2,gamma=0.5" and step.optimizer == "sgd:lr=0.3,momentum=0.9"
    onecycle = at_lr(Variant("oc", "onecycle:max_lr=0.1,pct_start=0.2"), 0.3, "sgd:lr=0.05")
    assert onecycle.schedule == "onecycle:max_lr=0.3,pct_start=0.2" and onecycle.optimizer == "sgd:lr=0.3"
    assert (onecycle.label, onecycle.arm, onecycle.lr) == ("oc/lr=0.3", "oc", 0.3)


def test_an_lr_sweep_judges_each_schedule_at_its_best_validation_lr(base, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["compare", "--schedules", "constant", "step:step_size=1,gamma=0.5", "--lrs", "0.005", "0.1",
                 "--seeds", "0", "1", "--dataset", "digits", "--epochs", "2", "--width", "4", "--limit-train", "300",
                 "--out", str(out), "--quiet"]) == 0
    comparison = aggregate(out)
    for result in comparison.results:
        label = safe_folder_name(result.label, set())  # the folder of its runs
        mean_val = {}
        for lr in ("0.005", "0.1"):
            finals = [RunDirectory(out / label / f"lr={lr}" / f"seed-{s}").read_metrics()[-1] for s in (0, 1)]
            mean_val[float(lr)] = sum(row["val_acc"] for row in finals) / 2
        assert result.picked_lr == max(mean_val, key=mean_val.get)
        assert [p.lr for p in result.sweep] == [0.005, 0.1]
        picked_finals = [RunDirectory(out / label / f"lr={result.picked_lr:g}" / f"seed-{s}").read_metrics()[-1]["test_acc"]
                         for s in (0, 1)]
        assert result.final_acc.mean == pytest.approx(sum(picked_finals) / 2)
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [float(row["picked_lr"]) for row in rows] == [r.picked_lr for r in comparison.results]
    assert (out / "plots" / "acc_vs_lr.png").stat().st_size > 10_000
    assert "picked by mean final validation accuracy" in verdict(comparison)
    assert "LR (picked on validation)" in (out / "summary.md").read_text()


def test_lr_and_an_lr_sweep_together_are_refused(tmp_path, capsys):
    assert main(["compare", "--schedules", "constant", "--lr", "0.1", "--lrs", "0.1", "0.2", "--dataset", "digits",
                 "--out", str(tmp_path / "x")]) == 2
    assert "either --lr" in capsys.readouterr().err


def test_two_seeds_never_make_a_difference_real_however_large(base):
    variants = [Variant("tiny-lr", "constant", "sgd:lr=0.00005"), Variant("sane", "constant")]
    run_comparison(base, variants, [0, 1], base.out, show_progress=False)
    text = verdict(build_report(base.out))
    assert "\n- sane: too few seeds to judge, " in text and ": better" not in text


def test_several_arms_are_judged_on_holm_adjusted_p_values_shown_beside_the_raw_ones(base):
    variants = [Variant("tiny-lr", "constant", "sgd:lr=0.00005"), Variant("sane", "constant"),
                Variant("also-tiny", "constant", "sgd:lr=0.00006")]
    run_comparison(base, variants, [0, 1, 2], base.out, show_progress=False)
    comparison = build_report(base.out)
    rows = {row["schedule"]: row for row in csv.DictReader((Path(base.out) / "summary.csv").open())}
    for result in comparison.results[1:]:
        if result.difference.p_value != result.difference.p_value:  # nan: right and wrong on the same images as tiny-lr
            assert rows[result.label]["p_holm"] == "" and rows[result.label]["verdict"] == "no spread"
            continue
        assert result.difference.p_adjusted >= result.difference.p_value
        assert float(rows[result.label]["p_holm"]) == pytest.approx(result.difference.p_adjusted, rel=1e-2)
        # The seeds it would take are counted at Holm's strictest level, 5% over the two comparisons.
        assert result.seed_plan == seeds_to_resolve(result.difference, 0.005, comparisons=2)
        assert result.seeds_needed == result.seed_plan.seeds
    assert "p (Holm)" in (Path(base.out) / "summary.md").read_text()


def _comparison_with(differences: dict[str, PairedDifference], seeds_needed: int | None = None) -> Comparison:
    """A comparison whose arms differ from the baseline as given: the verdict's logic alone."""
    def result(label, difference=None):
        summary = Summary(3, 0.9, 0.01, 0.88, 0.92)
        return ScheduleResult(label, label, "sgd", [0, 1, 2], {0: "finished", 1: "finished", 2: "finished"},
                              summary, summary, summary, difference, [], [], {}, {}, {}, seeds_needed=seeds_needed)
    results = [result("base")] + [result(label, d) for label, d in differences.items()]
    return Comparison(Path("x"), "base", 0.9, 3, {}, results, test_images=100_000)


def test_the_verdict_calls_a_difference_real_only_on_its_holm_adjusted_p():
    # Raw p 0.03 and 0.5: Holm multiplies the smaller by 2, to 0.06, so neither is called real.
    close = PairedDifference(3, 0.02, 0.001, 0.04, 0.03, std=0.005, p_adjusted=0.06)
    far = PairedDifference(3, 0.001, -0.01, 0.012, 0.5, std=0.005, p_adjusted=0.5)
    text = verdict(_comparison_with({"a": close, "b": far}, seeds_needed=7))
    assert ": better" not in text
    assert "\n- a: undecided, +2.00 points (95% interval +0.10 to +4.00, 3 seeds); about 7 seeds would tell a 0.5-point difference." in text
    assert "\n- b: undecided, +0.10 points" in text
    real = PairedDifference(3, 0.02, 0.01, 0.03, 0.001, std=0.005, p_adjusted=0.002)
    text = verdict(_comparison_with({"a": real, "b": far}))
    assert "\n- a: better, +2.00 points (95% interval +1.00 to +3.00, 3 seeds)." in text
    assert "Holm's correction over the 2 comparisons with base" in text


def test_a_large_test_set_resolves_half_a_point_and_a_small_one_does_not():
    from lrlab.preview import resolvable_difference

    # 1.96 * sqrt(0.05 / N): 0.44 points for 10,000 images, 2.3 points for digits' 360.
    assert resolvable_difference(10_000) == pytest.approx(0.00438, abs=1e-5) and resolvable_difference(360) > 0.02


def test_doctor_says_when_a_test_set_cannot_resolve_the_minimum_effect(capsys):
    assert main(["doctor", "constant", "--test-images", "6"]) == 1
    assert "the test set has 6 images" in capsys.readouterr().out
    assert main(["doctor", "constant", "--test-images", "100000"]) == 0


def test_a_small_test_set_is_flagged_before_training_and_in_the_report(base, capsys):
    small = replace(base, limit_test=60, epochs=4)
    run_comparison(small, variants_from_specs(["constant", "cosine:T_max=3"]), [0, 1, 2], base.out, show_progress=False)
    assert "the test set has 60 images" in capsys.readouterr().err
    comparison = build_report(base.out)
    assert comparison.test_images == 60
    assert "The test set (60 images) is too small to resolve 0.5-point differences" in verdict(comparison)
    assert (Path(base.out) / "plots" / "test_acc_last_epochs.png").exists()  # the zoomed last epochs
    page = (Path(base.out) / "report.html").read_text()
    assert "<th>final acc % (mean ± sd)</th>" in page and "<th>final_acc_mean</th>" not in page
