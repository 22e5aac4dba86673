"""`bench report` of a small real run, opened in headless Chromium: no console error, no request
leaving the file, every table, plot and grid present, and sorting reorders the leaderboard."""
import platform
import shutil

import pytest
import torch
from click.testing import CliRunner

from bench.cli import main
from bench.datasets.synthetic import generate

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (Debian: apt-get install "
                                                          "chromium; .ci/run installs it)")
CATEGORIES = ["tile", "pill"]
REFINERS = ["none", "ard", "gaussian"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A run of 2 categories × 3 refiners with a contamination sweep, and its report."""
    folder = tmp_path_factory.mktemp("report")
    root = generate(folder / "syn", seed=1, categories=CATEGORIES, n_test=12, size=64, progress=False)
    runner = CliRunner()
    args = ["run", "--data-root", str(root), "--out", str(folder / "out"), "--methods", "musc",
            "--refiners", "ard,gaussian", "--n-groups", "2", "--contamination", "0,0.5", "--seed", "3", "--quiet",
            "--set", "figures=2",
            "--set", "pgt.synth_per_group=4", "--set", "refiner_options.ard.steps=2"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["report", "--out", str(folder / "out"), "--output", str(folder / "report.html")])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("report: ") and str(folder / "report.html") in result.output
    return folder / "report.html"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


def test_report_opens_in_chromium_with_everything_in_it(report, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems, requests = [], []
    page.on("console", lambda message: problems.append(f"console {message.type}: {message.text}")
            if message.type in ("error", "warning") else None)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("requestfailed", lambda request: problems.append(f"failed: {request.url}"))
    page.on("request", lambda request: requests.append(request.url))
    page.goto(report.as_uri(), wait_until="load")
    assert problems == []
    assert [url for url in requests if not url.startswith("data:")] == [report.as_uri()]  # nothing from elsewhere

    leaderboard = page.locator("#leaderboard-table tbody tr")
    assert leaderboard.count() == len(REFINERS)
    assert page.locator("#leaderboard-table thead th").all_inner_texts()[2:] == [
        "pixel AUROC", "pixel AP", "pixel F1-max", "AUPRO"]
    assert page.locator("#decoders-table tbody tr").count() == len(REFINERS)
    assert page.locator("#groups-table tbody tr").count() == 2  # two PGT groups
    for plot in ("#plot-cost", "#plot-contamination", "#plot-loss"):
        assert page.locator(plot).count() == 1, plot
    assert page.locator("figure.grid img").count() == len(CATEGORIES)
    broken = page.evaluate("[...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt)")
    assert broken == []
    assert page.locator("pre.command").first.inner_text().startswith("bench run --set seed=3 ")
    assert "bench.git_commit" not in page.locator("#reproduce").inner_text()  # shown as 'git commit'
    cpu = f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()}"  # the run's bench.cpu tag
    assert f"CPU kernels\t{cpu}" in page.locator("#reproduce").inner_text()

    def refiners() -> list[str]:
        return page.locator("#leaderboard-table tbody tr td:nth-child(2)").all_inner_texts()

    def column(index: int) -> list[float]:
        return [float(v) for v in page.eval_on_selector_all(
            f"#leaderboard-table tbody tr td:nth-child({index})", "cells => cells.map(c => c.dataset.v)")]

    assert refiners() == REFINERS  # as written in the HTML: none first
    header = page.locator("#leaderboard-table thead th")
    header.nth(1).click()
    assert refiners() == ["none", "gaussian", "ard"]
    header.nth(1).click()
    assert refiners() == ["ard", "gaussian", "none"]
    header.nth(3).click()  # pixel AP: best first, then the reverse
    assert column(4) == sorted(column(4), reverse=True)
    assert header.nth(3).get_attribute("aria-sort") == "descending"
    header.nth(3).click()
    assert column(4) == sorted(column(4))
    assert problems == []

    screenshot = tmp_path / "report.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"screenshot of the report: {screenshot}")
    page.close()
