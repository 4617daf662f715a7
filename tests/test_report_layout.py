"""The report a newcomer reads (issue 25, items 2, 3, 4): readable on a phone and a wide screen, plots
whose titles and legends stay clear of the data, arms that were the same run flagged, doctor's notes,
and an LR picked at the edge of its grid or a study's setting picked at the edge of its search range."""

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lrlab import report
from lrlab.grid import run_comparison, variants_from_specs
from lrlab.aggregate import aggregate
from lrlab.report import build_report, notes, search_edge_notes, write_plots
from lrlab.tuning import Range, widened
from lrlab import RunConfig

CHROMIUM = shutil.which("chromium")
PLATEAU_THAT_NEVER_CUTS = "plateau:mode=min,factor=0.5,patience=1"


@pytest.fixture(scope="module")
def comparison_folder(tmp_path_factory):
    """Four one-epoch runs: a constant LR and a plateau that cannot cut it (the same run), each at two LRs."""
    out = tmp_path_factory.mktemp("report") / "cmp"
    base = RunConfig(dataset="digits", model="mlp", width=4, epochs=1, batch_size=64, limit_train=256,
                     optimizer="sgd:lr=0.05,momentum=0.9", out=str(out), quiet=True, device="cpu")
    variants = variants_from_specs(["constant", PLATEAU_THAT_NEVER_CUTS])
    run_comparison(base, variants, [0], str(out), show_progress=False, lrs=[0.02, 0.1])
    build_report(out)
    return out


def test_an_arm_that_ran_the_same_lr_as_another_is_flagged_everywhere(comparison_folder):
    comparison = aggregate(comparison_folder)
    plateau = next(r.label for r in comparison.results if r.schedule == PLATEAU_THAT_NEVER_CUTS)
    flagged = [n for n in notes(comparison) if "same LR as constant" in n]
    assert len(flagged) == 1 and flagged[0].startswith(plateau)
    assert "same LR as constant" in (comparison_folder / "summary.md").read_text()
    assert "same LR as constant" in (comparison_folder / "report.html").read_text()


def test_doctors_notes_are_in_the_report_and_the_summary(comparison_folder):
    for name in ("summary.md", "report.html"):
        text = html.unescape((comparison_folder / name).read_text())
        assert "lrlab doctor on" in text and "patience=1 leaves it at most 0 chances to cut the LR" in text


def test_an_lr_picked_at_the_edge_of_the_grid_says_to_extend_it(comparison_folder):
    # With two LRs every pick is at an edge; both arms are the same run, so they pick alike.
    comparison = aggregate(comparison_folder)
    [picked] = {r.picked_lr for r in comparison.results}
    [edge] = [n for n in notes(comparison) if "of the grid" in n]
    if picked == 0.1:
        assert "picked LR 0.1, the largest of the grid (--lrs 0.02 0.1)" in edge and "e.g. --lrs 0.02 0.1 0.5" in edge
    else:
        assert "picked LR 0.02, the smallest of the grid (--lrs 0.02 0.1)" in edge and "e.g. --lrs 0.004 0.02 0.1" in edge


def write_study_record(out: Path, picks: dict[str, tuple[str, float, dict]], lr_range: str = "lr=0.005:0.5:log") -> None:
    """A study.json as lrlab.study writes it, by hand: per schedule (spec, confirmed LR, confirmed arguments)."""
    arms, confirmed = {}, {}
    for label, (spec, lr, params) in picks.items():
        trial = {"number": 0, "seed": 100, "lr": lr, "params": params, "state": "complete", "epochs": 1,
                 "val_acc": [0.5], "path": f"tuning/{label}/trial-0"}
        arms[label] = {"spec": spec, "trials": [trial], "epochs_trained": 1, "pruned": 0, "failed": 0}
        confirmed[label] = {"trial": 0, "schedule": spec, "optimizer": f"sgd:lr={lr}"}
    settings = {"trials": 1, "search_lr": lr_range.partition("=")[2], "sampler": "qmc", "prune": "none",
                "tuning_seeds": [100], "storage": None, "schedules": {k: v[0] for k, v in picks.items()}, "epochs": 1}
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps({"settings": settings, "lr_range": lr_range, "rungs": [], "arms": arms,
                                                "confirmed": confirmed}))


def test_a_study_pick_near_an_end_of_its_search_range_says_to_widen_that_end(tmp_path):
    write_study_record(tmp_path, {
        "constant": ("constant", 0.48, {}),  # 99% of the way up 0.005-0.5 on a log scale
        "step": ("step:step_size=2:8,gamma=0.1:0.7", 0.05, {"step_size": 8, "gamma": 0.4}),  # LR mid-range, step_size at the top
    })
    lr_note, step_note = search_edge_notes(tmp_path)
    assert lr_note == ("constant at lr=0.48 was confirmed near the top of the LR search range (--search lr=0.005:0.5:log): "
                       "the best LR may lie beyond it; widen that end, e.g. --search lr=0.005:1.6:log.")
    assert step_note == ("step was confirmed at step_size=8, near the top of its search range step_size=2:8: the best may "
                         "lie beyond it; widen that end, e.g. step:step_size=2:10,gamma=0.1:0.7.")


def test_a_study_pick_inside_its_search_ranges_is_not_flagged(tmp_path):
    write_study_record(tmp_path, {
        "constant": ("constant", 0.05, {}),  # the middle of 0.005-0.5 on a log scale
        "step": ("step:step_size=2:8,gamma=0.1:0.7", 0.0075, {"step_size": 5, "gamma": 0.65}),  # all within 10-92%
        # At 1, a decay factor has nowhere further to go: the end of the range is not the search's limit.
        "plateau": ("plateau:factor=0.5:1.0", 0.05, {"factor": 0.99}),
    })
    assert search_edge_notes(tmp_path) == []


def test_a_widened_range_stays_where_a_schedule_can_go():
    assert widened(Range("lr", 0.005, 0.5, log=True), "low") == Range("lr", 0.0016, 0.5, log=True)
    assert widened(Range("gamma", 0.1, 0.9), "low") == Range("gamma", 0.05, 0.9)  # positive stays positive
    assert widened(Range("gamma", 0.1, 0.9), "high") == Range("gamma", 0.1, 1.0)  # a fraction stays one
    assert widened(Range("step_size", 1, 4, integer=True), "low") is None
    assert widened(Range("step_size", 1, 4, integer=True), "high") == Range("step_size", 1, 5, integer=True)


def test_a_study_pick_at_the_edge_of_its_range_is_in_the_reports_notes(comparison_folder, tmp_path):
    out = tmp_path / "cmp"
    shutil.copytree(comparison_folder, out)
    write_study_record(out, {"constant": ("constant", 0.0051, {})})
    build_report(out)
    for name, heading in (("summary.md", "## {}"), ("report.html", "<h2>{}</h2>")):
        text = html.unescape((out / name).read_text())
        notes_section = text[text.index(heading.format("Notes")):text.index(heading.format("Tuning"))]
        assert "constant at lr=0.0051 was confirmed near the bottom of the LR search range" in notes_section
        assert "e.g. --search lr=0.0016:0.5:log" in notes_section


def test_plot_titles_stay_inside_and_legends_stay_outside_the_data(comparison_folder, monkeypatch):
    checked = []
    save = report._save

    def checking_save(figure, folder, name):
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        frame = figure.bbox
        for ax in figure.axes:
            title = ax.title.get_window_extent(renderer)
            assert frame.x0 <= title.x0 and title.x1 <= frame.x1 and title.y1 <= frame.y1, f"{name}: title clipped"
            for legend in [*figure.legends, *([ax.get_legend()] if ax.get_legend() else [])]:
                assert not legend.get_window_extent(renderer).overlaps(ax.bbox), f"{name}: legend covers the data"
        checked.append(name)
        return save(figure, folder, name)

    monkeypatch.setattr(report, "_save", checking_save)
    write_plots(aggregate(comparison_folder))
    assert {"lr_by_epoch", "test_acc", "final_acc", "acc_vs_lr"} <= set(checked)


def measuring_page(report_html: str, width: int) -> str:
    """The report inside an iframe `width` CSS pixels wide, measured by a script outside it (the report
    itself allows no script). An iframe, because headless Chromium's window is at least 500 pixels wide."""
    script = """<script>
window.addEventListener('load', () => {
  const doc = document.querySelector('iframe').contentDocument, root = doc.documentElement;
  const scroll = doc.querySelector('.scroll');
  document.body.setAttribute('data-measured', JSON.stringify({
    viewport: root.clientWidth, page: root.scrollWidth, height: root.scrollHeight,
    images: [...doc.images].map(i => i.getBoundingClientRect().width),
    table: scroll && [scroll.clientWidth, scroll.scrollWidth, scroll.querySelector('table').getBoundingClientRect().width]}));
});
</script>"""
    return (f'<!DOCTYPE html><html><head><style>body {{ margin: 0 }} iframe {{ border: 0; display: block }}</style></head>'
            f'<body><iframe width="{width}" height="900" srcdoc="{html.escape(report_html)}"></iframe>{script}</body></html>')


def chromium(*arguments: str, profile: Path) -> str:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=5000"]
    return subprocess.run([CHROMIUM, *flags, *arguments], capture_output=True, text=True, timeout=120, check=False).stdout


def measure(report_path: Path, width: int, tmp_path: Path) -> dict:
    page = tmp_path / f"measure-{width}.html"
    page.write_text(measuring_page(report_path.read_text(), width))
    dom = chromium(f"--window-size={max(width, 500)},900", "--dump-dom", page.as_uri(), profile=tmp_path / "profile")
    found = re.search(r'data-measured="([^"]*)"', dom)
    assert found, f"chromium measured nothing: {dom[:200]!r}"
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_report_reads_on_a_phone_and_on_a_wide_screen(comparison_folder, tmp_path):
    path = comparison_folder / "report.html"
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in path.read_text()
    phone = measure(path, 390, tmp_path)
    assert phone["page"] <= phone["viewport"], "the page scrolls sideways at 390 px"
    assert phone["images"] and max(phone["images"]) <= phone["viewport"]
    visible, scrolled, _ = phone["table"]
    assert scrolled > visible, "the table should scroll inside its box at 390 px, not be cut or widen the page"
    wide = measure(path, 1300, tmp_path)
    assert wide["page"] <= wide["viewport"] and wide["table"][0] >= wide["table"][2], "the table fits at 1300 px"
    assert min(wide["images"]) > 600, "plots are shown larger than the old 600 px cap where there is room"


def screenshot(report_path: Path, width: int, target: Path, tmp_path: Path) -> None:
    """A full-length screenshot of the report `width` CSS pixels wide (for docs/)."""
    from PIL import Image

    height = measure(report_path, width, tmp_path)["height"]
    page = tmp_path / f"shot-{width}.html"
    page.write_text(measuring_page(report_path.read_text(), width).replace('height="900"', f'height="{height}"'))
    chromium(f"--window-size={max(width, 500)},{height}", f"--screenshot={target}", page.as_uri(), profile=tmp_path / "profile")
    Image.open(target).crop((0, 0, width, height)).save(target, optimize=True)
