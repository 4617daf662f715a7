"""The report a newcomer reads (issue 25, items 2, 3, 4): readable on a phone and a wide screen, plots
whose titles and legends stay clear of the data, arms that were the same run flagged, doctor's notes,
and an LR picked at the edge of its grid."""

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
from lrlab.report import build_report, notes, write_plots
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
