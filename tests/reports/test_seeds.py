"""Pages of a sweep with seeds: a condition with two or more seeds shows its interval across seeds, and says so."""

from __future__ import annotations

import html
import re

import pytest

from phasefit.crossrun import crossrun
from phasefit.simulate import to_store
from reports.browser import check_pages
from reports.data import load_runs
from reports.site import report
from reports.sweeps import scaling_chart
from tests.helpers.reports_sweep import _run
from tests.reports.test_pages import _chromium, _specs

SEED_KIND = "seeds: t interval over 3 seeds' estimates"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Uniform runs at N = 200 and 400, three seeds each, and one seed at N = 800."""
    root = tmp_path_factory.mktemp("seeded")
    for n in (200, 400):
        for seed in (0, 1, 2):
            to_store(_run(n, seed=seed), root / f"N{n}-seed{seed}")
    to_store(_run(800), root / "N800-seed0")
    return root


@pytest.fixture(scope="module")
def runs(sweep):
    return load_runs(sweep, n_boot=20)


@pytest.fixture(scope="module")
def site(sweep, runs):
    report(sweep, n_boot=20)
    return sweep / "report"


def _error_bar_rows(spec: dict) -> list[dict]:
    """The data of the chart's error bars (its rule marks from t2_low to t2_high)."""
    def layers(node):
        yield node
        for child in node.get("layer", []):
            yield from layers(child)

    names = [layer["data"]["name"] for layer in layers(spec) if layer.get("mark") in ("rule", {"type": "rule"})
             and layer.get("encoding", {}).get("y2", {}).get("field") == "t2_high"]
    return [row for name in names for row in spec["datasets"][name]]


def _conditions(runs):
    return crossrun([r.phases for r in runs]).conditions


def test_the_index_leads_with_the_conditions_across_seeds(site, runs):
    body = (site / "index.html").read_text()
    conditions, rest = body.split("<h2>Runs (each interval from one seed)</h2>")
    assert "<h2>Conditions (across seeds)</h2>" in conditions and html.escape(f"95% intervals: {SEED_KIND}") in conditions
    rows = re.findall(r"<tr><td>(N=\d+)</td><td class=\"num\">(\d)</td>(.*?)</tr>", conditions, re.S)
    assert [(n, seeds) for n, seeds, _ in rows] == [("N=200", "3"), ("N=400", "3")]  # N=800 has one seed
    expected = _conditions(runs).iloc[1]
    t2 = re.findall(r'<td class="num">([\d,]+) \[([\d,]+), ([\d,]+)\]</td>', rows[1][2])[1]
    assert [float(x.replace(",", "")) for x in t2] == pytest.approx(
        [expected["t2"], expected["t2_lo"], expected["t2_hi"]], abs=0.5)
    assert "95% intervals: one seed: " in rest


def test_a_run_page_shows_its_conditions_interval_across_seeds(site):
    page = (site / "runs" / "N400-seed1.html").read_text()
    assert "Its condition, across 3 seeds" in page and "N400-seed0, N400-seed1, N400-seed2" in page
    assert html.escape(SEED_KIND) in page
    single = (site / "runs" / "N800-seed0.html").read_text()
    assert "Its condition" not in single


def test_the_scaling_chart_draws_a_seeded_conditions_interval_and_says_which(runs):
    spec = scaling_chart(runs).to_dict()
    one, seeds = spec["title"]["subtitle"]
    assert one.startswith("95% interval bars, one seed: ") and seeds == f"95% interval bars, {SEED_KIND}"
    bars = {(row["N"], row["interval"], row["t2_low"], row["t2_high"]) for row in _error_bar_rows(spec)}
    assert sorted((n, kind == SEED_KIND) for n, kind, _, _ in bars) == [(200, True), (400, True), (800, False)]
    expected = _conditions(runs).set_index("N")
    for n, kind, low, high in bars:
        if kind == SEED_KIND:  # one bar for the condition, at its seeds' interval
            assert [low, high] == pytest.approx([expected.loc[n, "t2_lo"], expected.loc[n, "t2_hi"]], rel=1e-3)


@pytest.mark.browser
def test_seeded_pages_render_in_headless_chromium(site):
    chromium = _chromium()
    pages = sorted(site.rglob("*.html"))
    assert len(pages) == 8
    for check in check_pages(pages, chromium):
        assert check.ok, check.problems()
        assert not check.warnings, f"{check.path}: Vega warned: {check.warnings}"
        assert len(check.charts) == len(_specs(site / check.path))
