"""reports: the pages of fine-tuning, patched and sequential runs."""

from __future__ import annotations

import json
import re

import altair as alt
import pytest

import reports
from phasefit.errors import PhasefitError
from phasefit.simulate import simulate, to_store
from reports.data import run_data
from reports.site import write_run_page
from tests.helpers.intervention_runs import finetune_run, patched_pair, sequential_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("interventions")
    patched, reference = patched_pair(root / "reference")
    to_store(reference, root / "reference")
    return {"finetune": run_data(finetune_run(), "finetune", n_boot=20),
            "patching": run_data(to_store(patched, root / "patched"), n_boot=20),
            "sequential": run_data(sequential_run()[0], "sequential", n_boot=20)}


def _specs(page) -> dict:
    found = re.search(r'<script type="application/json" id="chart-specs">(.*?)</script>', page.read_text(), re.S)
    return json.loads(found.group(1))


@pytest.mark.parametrize("kind", ["finetune", "patching", "sequential"])
def test_each_intervention_run_page_leads_with_its_own_figure(runs, kind):
    charts = reports.run_charts(runs[kind])
    assert list(charts)[0] == kind and "population" in charts
    assert not ({"finetune", "patching", "sequential"} - {kind}) & set(charts)
    assert charts[kind].to_dict()["$schema"].startswith("https://vega.github.io/schema/vega-lite/v6")  # validates


def test_a_finetune_run_page_is_written_with_its_figure(runs, tmp_path):
    page = tmp_path / "finetune.html"
    specs = write_run_page(runs["finetune"], page)
    assert set(_specs(page)) == set(specs) and "chart-finetune" in specs
    assert "fine-tuning run: its trained individuals are known from step 0" in page.read_text()


def test_finetune_page_marks_the_collapse_step_and_draws_old_against_new(runs):
    spec = json.dumps(reports.finetune_run_chart(runs["finetune"]).to_dict())
    assert "collapse step" in spec and "old (trained before)" in spec and '"new"' in spec
    assert "collapse step 70" in spec  # the subtitle quotes the measure


def test_patching_page_overlays_the_reference_run(runs):
    run = runs["patching"]
    assert len(run.reference) > 10 and {"step", "loss", "accuracy"} <= set(run.reference.columns)
    spec = json.dumps(reports.patching_chart(run).to_dict())
    assert "t2 reference" in spec and "t2 patched" in spec and '"reference"' in spec


def test_sequential_page_draws_every_group(runs):
    run = runs["sequential"]
    assert sorted(run.groups["group"].unique()) == [0, 1, 2]
    assert len(reports.sequential_chart(run).layer) == 2


def test_intervention_charts_say_what_they_need():
    plain = run_data(simulate(n_individuals=100, n_heldout=10, n_evals=30), "plain", n_boot=0)
    for make in (reports.finetune_run_chart, reports.patching_chart, reports.sequential_chart):
        with pytest.raises(PhasefitError, match="is not a"):
            make(plain)
    assert isinstance(reports.run_page(plain), alt.VConcatChart)
