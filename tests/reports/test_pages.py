"""``phasefit report``: the site of a tiny simulated sweep, opened in headless Chromium.

The browser test needs Chromium (Debian's chromium package; .ci/run installs it). Without
it the test is skipped with that reason, except in CI (CI=true), where it fails.
"""

from __future__ import annotations

import html
import json
import os
import re

import pytest

from phasefit.cli import main as cli
from phasefit.simulate import simulate
from reports.browser import check_pages, find_chromium
from reports.site import page_slug, report
from tests.helpers.reports_sweep import EVIL_NAME, EVIL_TEXT, make_sweep

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _chromium() -> str:
    """Chromium's path; skip without it, except in CI (CI=true), where a missing browser fails."""
    chromium = find_chromium()
    if chromium is None:
        if IN_CI:
            pytest.fail("CI=true and no chromium executable: .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install chromium, or set CHROMIUM=/path/to/chrome)")
    return chromium


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return make_sweep(tmp_path_factory.mktemp("sweep"))


@pytest.fixture(scope="module")
def site(sweep):
    out = sweep / "report"
    report(sweep, n_boot=20)
    return out


def _specs(page) -> dict:
    text = page.read_text()
    found = re.search(r'<script type="application/json" id="chart-specs">(.*?)</script>', text, re.S)
    return json.loads(found.group(1))


def _index_rows(site) -> dict[str, str]:
    body = (site / "index.html").read_text()
    rows = re.findall(r"<tr><td>(.*?)</tr>", body, re.S)
    return {html.unescape(re.sub(r"<[^>]+>", "", r.split("</td>")[0])): r for r in rows}


def test_index_lists_every_run_with_state_phases_and_links(sweep, site):
    rows = _index_rows(site)
    names = {"uniform-N200", "uniform-N400", "uniform-N800", "uniform-N1600", "alpha1-N400", "warmup/warmup50x1",
             f"warmup/{EVIL_NAME}", "finetune", "live", "broken"}
    assert set(rows) == names
    assert "state-running" in rows["live"] and "state-failed" in rows["uniform-N1600"]
    assert "state-unreadable" in rows["broken"] and "unreadable store" in rows["broken"] and "href" not in rows["broken"]
    assert "state-complete" in rows["uniform-N800"]
    # the phase table: t2 with its interval, from the same analysis as `phasefit detect`
    t2 = re.findall(r'<td class="num">([\d,]+) \[([\d,]+), ([\d,]+)\]</td>', rows["uniform-N800"])[0]
    low, value, high = (float(t2[i].replace(",", "")) for i in (1, 0, 2))
    assert low <= value <= high and 300 < value < 500
    index = (site / "index.html").read_text()
    assert "95% intervals: one seed: individuals and step-to-step training noise resampled" in index  # what they leave out, said under the table
    for name in names - {"broken"}:
        link = re.search(r'href="([^"]+)"', rows[name]).group(1)
        assert (site / html.unescape(link)).is_file()
    index_specs = _specs(site / "index.html")
    assert set(index_specs) == {"chart-scaling", "chart-alpha", "chart-warmup", "chart-warmup_plateau",
                                "chart-finetune", "chart-known"}


def test_run_pages_draw_every_section(site):
    specs = _specs(site / "runs" / "uniform-N400.html")
    assert set(specs) == {f"chart-{k}" for k in ("population", "attributes", "hallucination", "acquisition",
                                                  "attention", "training")}
    text = json.dumps(specs)
    assert "q25" in text and "acquisition_step" not in text  # aggregates, never per-fact arrays


def test_run_names_and_config_text_are_escaped(site):
    pages = sorted(site.rglob("*.html"))
    evil_page = site / "runs" / f"{page_slug('warmup/' + EVIL_NAME)}.html"
    assert evil_page in pages
    for page in pages:
        text = page.read_text()
        assert "<img src=x" not in text and "<b>bold</b>" not in text and EVIL_TEXT not in text
    text = evil_page.read_text()
    assert html.escape(f"warmup/{EVIL_NAME}") in text and html.escape(EVIL_TEXT) in text


def test_pages_are_offline_and_small(site):
    for page in site.rglob("*.html"):
        text = page.read_text()
        assert "Content-Security-Policy" in text and "default-src 'none'" in text
        assert not re.search(r'<(script|link|img)[^>]*(src|href)="https?:', text)
        assert page.stat().st_size < 3_000_000


def test_a_running_run_shows_what_is_committed(sweep, site):
    import logstore

    live = logstore.open_run(sweep / "live")
    page = (site / "runs" / "live.html").read_text()
    assert f"evaluated to step {live['step'].values[-1]:,.0f} of 3,000" in page
    steps = [v["step"] for spec in _specs(site / "runs" / "live.html")["chart-population"]["datasets"].values()
             for v in spec if "step" in v and "loss" in v]
    assert max(steps) == live["step"].values[-1]


@pytest.mark.browser
def test_every_page_renders_in_headless_chromium(site):
    """Each chart's container holds an svg, and the console shows no error, on every page."""
    chromium = _chromium()
    pages = sorted(site.rglob("*.html"))
    assert len(pages) == 10  # the index and one page per readable run
    for check in check_pages(pages, chromium):
        assert check.ok, check.problems()
        assert not check.warnings, f"{check.path}: Vega warned: {check.warnings}"  # e.g. an empty or zero log extent
        assert len(check.charts) == len(_specs(site / check.path)) >= 5


@pytest.mark.browser
def test_the_browser_check_sees_errors(tmp_path):
    """A page whose chart stays empty and that logs an error must not pass."""
    chromium = _chromium()
    page = tmp_path / "bad.html"
    page.write_text('<html><body><div class="chart" id="chart-x"></div>'
                    '<script>console.error("broken"); document.body.dataset.charts = "1";</script></body></html>')
    (check,) = check_pages([page], chromium)
    assert not check.ok and check.errors == ["broken"] and check.charts == [{"id": "chart-x", "rendered": False, "error": None}]


def test_regenerating_while_a_run_is_training(tmp_path):
    """A report made while the writer is still appending shows exactly the committed rows,
    and the next report shows more."""
    from logstore import RunWriter

    ds = simulate(n_individuals=200, n_heldout=40, n_steps=2000, n_evals=40, t1=40, t2=400, t3=1200, seed=3)
    writer = RunWriter.create(tmp_path / "runs" / "now" / "metrics.zarr", individual=ds["individual"].values,
                              split=ds["split"].values, rank=ds["rank"].values, baseline=ds["baseline"].values,
                              n_layers=ds.sizes["layer"], n_heads=ds.sizes["head"], config=ds.attrs["config"],
                              package_version="test", fsync=False)
    names = ("loss", "correct", "top_prob", "entropy", "exposures", "attn_name_to_name", "attn_value_to_name",
             "attn_sharpness")
    page = tmp_path / "runs" / "report" / "runs" / "now.html"
    report(tmp_path / "runs", n_boot=0)  # nothing committed yet
    assert "No committed evaluation yet" in page.read_text() and "state-running" in page.read_text()
    shown = []
    for upto in (15, 30):
        for k in range(upto - 15, upto):
            writer.append_eval(int(ds["step"].values[k]), **{n: ds[n].values[k] for n in names})
        writer.flush()
        report(tmp_path / "runs", n_boot=0)
        text = page.read_text()
        assert "state-running" in text
        shown.append(int(re.search(r"evaluated to step ([\d,]+)", text).group(1).replace(",", "")))
    writer.close()
    assert shown == [ds["step"].values[14], ds["step"].values[29]]


def test_the_command_line_writes_pngs_and_flags_unreadable_runs(sweep, tmp_path, capsys):
    import shutil

    from phasefit.simulate import to_store

    runs = tmp_path / "runs"
    to_store(simulate(n_individuals=150, n_heldout=30, n_steps=1000, n_evals=25, seed=2), runs / "one")
    shutil.copytree(sweep / "broken", runs / "broken")
    # exit 1: the site is written, but one run could not be read (the index says why)
    assert cli(["report", str(runs), "-o", str(tmp_path / "site"), "--png"]) == 1
    captured = capsys.readouterr()
    assert "2 runs, 2 pages" in captured.out and "6 PNG images" in captured.out
    assert "run broken: unreadable store" in captured.err
    assert "state-unreadable" in (tmp_path / "site" / "index.html").read_text()
    pngs = sorted(p.name for p in (tmp_path / "site" / "png" / "one").glob("*.png"))
    assert pngs == ["acquisition.png", "attention.png", "attributes.png", "hallucination.png", "population.png",
                    "training.png"]
    assert (tmp_path / "site" / "png" / "one" / "population.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_command_line_reports_bad_input_in_one_line(tmp_path, capsys):
    assert cli(["report", str(tmp_path / "nowhere")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(["report", str(empty)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"phasefit: error: {tmp_path / 'nowhere'}: no such folder",
                   f"phasefit: error: {empty}: no runs (no folder below it holds metrics.zarr)"]
