import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import without_timing

from lrlab.cli import main
from lrlab.runs import RunDirectory

TINY = ["--dataset", "digits", "--model", "cnn", "--width", "4", "--epochs", "2", "--batch-size", "64", "--quiet"]


def run_cli(*arguments):
    """The real console script, as a user runs it."""
    return subprocess.run(["lrlab", *arguments], capture_output=True, text=True, timeout=120, check=False)


def test_train_command_trains_and_prints_a_summary(tmp_path, capsys):
    assert main(["train", *TINY, "--out", str(tmp_path / "run")]) == 0
    assert "finished: 2 epochs, test accuracy" in capsys.readouterr().out
    assert len(RunDirectory(tmp_path / "run").read_metrics()) == 2


@pytest.mark.parametrize("arguments, says", [
    (["--dataset", "digitz"], "did you mean 'digits'"),
    (["--model", "cnm"], "did you mean 'cnn'"),
    (["--optimizer", "sdg:lr=0.1"], "did you mean 'sgd'"),
    (["--schedule", "stpe:step_size=5"], "did you mean 'step'"),
    (["--schedule", "step:gama=0.5"], "did you mean 'gamma'"),
    (["--schedule", "step:step_size=x"], "step_size='x' should be int"),
    (["--epochs", "x"], "invalid int value"),
    (["--augment", "rotate"], "'rotate' is not one of"),
    (["--resume", "--overwrite"], "contradict"),
])
def test_bad_input_ends_with_one_line_and_status_2(tmp_path, arguments, says):
    result = run_cli("train", *TINY, "--out", str(tmp_path / "run"), *arguments)
    assert result.returncode == 2
    assert says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_missing_data_files_give_one_line_and_status_2(tmp_path):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 20)
    for stem in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / "mnist" / stem).write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x00")
    result = run_cli("train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run"), "--quiet")
    assert result.returncode == 2 and "truncated" in result.stderr and "Traceback" not in result.stderr


def test_a_run_directory_holding_another_run_is_left_untouched(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *TINY, "--out", out]) == 0
    before = {p.name: p.read_bytes() for p in Path(out).iterdir()}
    assert main(["train", *TINY, "--out", out, "--epochs", "3"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in Path(out).iterdir()} == before


def test_config_file_gives_the_same_run_as_the_options(tmp_path):
    assert main(["train", *TINY, "--schedule", "step:step_size=1,gamma=0.5", "--out", str(tmp_path / "a")]) == 0
    values = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    values.pop("versions")
    values["out"] = str(tmp_path / "b")
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(values))
    assert main(["train", "--config", str(tmp_path / "b.yaml")]) == 0
    assert without_timing(RunDirectory(tmp_path / "a").read_metrics()) == without_timing(RunDirectory(tmp_path / "b").read_metrics())


def test_options_on_the_command_line_override_the_config_file(tmp_path):
    (tmp_path / "c.yaml").write_text("dataset: digits\nmodel: cnn\nwidth: 4\nepochs: 3\nquiet: true\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    assert len(RunDirectory(tmp_path / "run").read_metrics()) == 1


@pytest.mark.parametrize("text, says", [
    ("epochz: 3\n", "unknown key 'epochz' (did you mean 'epochs'?)"),
    ("epochs: three\n", "epochs: 'three' should be a whole number"),
    ("- a list\n", "should hold key: value lines"),
    ("epochs: [\n", "is not valid YAML"),
])
def test_bad_config_files_are_refused(tmp_path, text, says):
    (tmp_path / "bad.yaml").write_text(text)
    result = run_cli("train", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and says in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_resume_needs_only_the_run_directory(tmp_path):
    out = str(tmp_path / "run")
    assert main(["train", *TINY, "--out", out]) == 0
    (tmp_path / "run" / "status.json").write_text('{"state": "interrupted"}')
    assert main(["train", "--out", out, "--resume", "--quiet"]) == 0
    assert len(RunDirectory(out).read_metrics()) == 2


def test_datasets_command_lists_where_each_data_set_is(capsys):
    assert main(["datasets"]) == 0
    output = capsys.readouterr().out
    assert "digits" in output and "fashion-mnist" in output and "cifar10" in output


def test_schedules_command_lists_every_torch_scheduler(capsys):
    from lrlab.schedules import COMBINATORS, scheduler_classes

    assert main(["schedules"]) == 0
    output = capsys.readouterr().out
    assert all(name in output for name in set(scheduler_classes()) - COMBINATORS)


def test_every_command_has_an_example_in_its_help():
    for command in ("train", "datasets", "schedules"):
        result = run_cli(command, "--help")
        assert result.returncode == 0 and "example" in result.stdout


def test_help_answers_without_importing_torch():
    # torch (and torchvision, matplotlib) take seconds to import; commands that do not train should not wait for them.
    code = ("import sys\nfrom lrlab.cli import main\ntry:\n    main(['train', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(name for name in ('torch', 'torchvision', 'matplotlib') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "example" in result.stdout and result.stdout.splitlines()[-1] == "[]"


def test_listing_the_data_sets_answers_without_importing_torch():
    # Listing names and file locations reads tables and folders only; torch would add seconds of start-up.
    code = ("import sys\nfrom lrlab.cli import main\nstatus = main(['datasets'])\n"
            "print(status, sorted(name for name in ('torch', 'torchvision', 'matplotlib') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    listing, last = result.stdout.splitlines()[:-1], result.stdout.splitlines()[-1]
    assert last == "0 []"
    assert [line.split()[0] for line in listing][:6] == ["fashion-mnist", "mnist", "cifar10", "cifar100", "digits", "synthetic"]


def test_every_shipped_config_file_is_valid():
    """A run's config loads as a RunConfig; a comparison's (schedules: or preset:) as compare --config reads it,
    with its study options and schedule specs checked too."""
    from lrlab.cli import _comparison_file
    from lrlab.config import load_config, read_yaml_mapping
    from lrlab.study import arm_label, settings_from_options

    configs = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))
    assert configs
    for path in configs:
        if {"schedules", "preset"} & set(read_yaml_mapping(path)):
            plan = _comparison_file(str(path))
            study = settings_from_options(plan.get("trials"), plan.get("search"), plan.get("tuning_seeds"))
            if study is not None:
                study.check(plan["seeds"])
            for item in plan.get("schedules", []):
                arm_label(item["schedule"] if isinstance(item, dict) else item)
        else:
            load_config(path)


def test_version_prints_the_package_version():
    from lrlab import __version__

    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"lrlab {__version__}"


COMMANDS_WITH_THEIR_LEAST_ARGUMENTS = {
    "train": ["--out", "x"], "compare": ["--preset", "article", "--out", "x"], "find-lr": ["--out", "x"], "report": ["x"],
    "preview": ["constant"], "doctor": ["constant"], "datasets": [], "schedules": [],
}


def test_every_command_accepts_quiet():
    from lrlab.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(commands) == set(COMMANDS_WITH_THEIR_LEAST_ARGUMENTS)
    for command, arguments in COMMANDS_WITH_THEIR_LEAST_ARGUMENTS.items():
        assert build_parser().parse_args([command, *arguments, "--quiet"]).quiet is True


def test_find_lr_quiet_prints_only_the_picked_lr(tmp_path, capsys):
    assert main(["find-lr", "--dataset", "digits", "--width", "4", "--steps", "10", "--out", str(tmp_path / "lr"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("lr=") and len(captured.out.splitlines()) == 1 and captured.err == ""


def _option_help(command: str) -> dict[str, str]:
    """Each option of `lrlab <command> --help` and its help text on one line."""
    from lrlab.cli import build_parser

    parser = build_parser()._subparsers._group_actions[0].choices[command]
    return {action.option_strings[0]: " ".join((action.help or "").split())
            for action in parser._actions if action.option_strings}


@pytest.mark.parametrize("command", sorted(COMMANDS_WITH_THEIR_LEAST_ARGUMENTS))
def test_help_states_each_default_once_and_none_for_required_options(command):
    for option, text in _option_help(command).items():
        assert text.count("(default") <= 1, (option, text)
        assert "(default: None)" not in text, (option, text)
    if command in ("compare", "find-lr"):
        assert "runs/run" not in _option_help(command)["--out"] and "required" in _option_help(command)["--out"]


def test_width_help_names_every_model_that_has_a_width():
    from lrlab.models import REGISTRY

    text = _option_help("train")["--width"]
    assert all(name in text for name in REGISTRY)
