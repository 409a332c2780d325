"""reports: the tables pages are drawn from, the chart functions, and page sizes."""

from __future__ import annotations

import json

import altair as alt
import numpy as np
import pytest

import phasefit
import reports
from phasefit.errors import PhasefitError
from phasefit.simulate import simulate
from reports.data import RunData, TRAINING_POINTS, compact, run_data


@pytest.fixture(scope="module")
def sim():
    return simulate(n_individuals=600, n_heldout=100, n_steps=4000, n_evals=60, t1=100, t2=1000, t3=2600,
                    alpha=1.0, n_layers=3, n_heads=2, seed=4)


@pytest.fixture(scope="module")
def run(sim) -> RunData:
    return run_data(sim, "sim", n_boot=20)


def test_population_table_matches_the_phases_curves_and_orders_its_quantiles(sim, run):
    pop = run.population
    assert set(pop["split"]) == {"train", "heldout"} and len(pop) == 2 * sim.sizes["step"]
    train = pop[pop["split"] == "train"].set_index("step")
    # the mean loss of every evaluated train fact, as phasefit defines L(t)
    expected = np.nanmean(sim["loss"].values[:, sim["split"].values == "train"].reshape(sim.sizes["step"], -1), axis=1)
    np.testing.assert_allclose(train["loss"].values, expected, rtol=1e-5)
    q = train[["q10", "q25", "q50", "q75", "q90"]].values
    assert (np.diff(q, axis=1) >= 0).all()
    per_individual = np.nanmean(sim["loss"].values[-1, sim["split"].values == "train"], axis=1)
    assert train["q50"].iloc[-1] == pytest.approx(np.median(per_individual), rel=1e-5)
    assert train["facts_known"].iloc[-1] == pytest.approx(train["accuracy"].iloc[-1] * 600 * 6)


def test_acquisition_rank_attention_and_training_tables_are_aggregates(sim, run):
    acquired = int(np.isfinite(phasefit.detect(sim, n_boot=0).acquisition["acquisition_step"].values).sum())
    assert run.acquisition["facts"].sum() == acquired
    assert run.acquisition.groupby("attribute").size().max() <= 40
    assert run.by_rank["facts"].sum() == 600 * 6 and len(run.by_rank) <= 30
    assert (run.by_rank["exposures_q25"] <= run.by_rank["exposures_q75"]).all()
    # with alpha = 1 the most frequent individuals have seen far more biographies when acquired
    assert run.by_rank["exposures_median"].iloc[0] > 10 * run.by_rank["exposures_median"].iloc[-1]
    assert len(run.attention) == sim.sizes["step"] * 3 * 3
    assert (run.attention["low"] <= run.attention["high"]).all()
    assert len(run.training) <= TRAINING_POINTS and run.training["step_hi"].max() == sim["train_step"].values[-1]
    assert run.never_acquired == pytest.approx(1 - acquired / (600 * 6))


RUN_CHARTS = ["loss_chart", "accuracy_chart", "population_chart", "attribute_loss_chart", "attribute_accuracy_chart",
              "attributes_chart", "hallucination_chart", "acquisition_histogram_chart", "acquired_by_decile_chart",
              "rank_chart", "acquisition_chart", "attention_chart", "training_chart"]


@pytest.mark.parametrize("name", RUN_CHARTS)
def test_every_run_chart_is_a_valid_altair_chart(run, name):
    chart = getattr(reports, name)(run)
    assert isinstance(chart, alt.TopLevelMixin)
    spec = chart.to_dict()  # validates against the Vega-Lite schema
    assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/v6")


def test_log_and_linear_loss_charts(run):
    log = reports.loss_chart(run, "log").to_dict()
    linear = reports.loss_chart(run, "linear").to_dict()
    assert '"type": "log"' in str(log).replace("'", '"') and '"type": "log"' not in str(linear).replace("'", '"')


def test_the_accuracy_chart_draws_the_chance_level_as_the_loss_chart_draws_the_baseline(sim, run):
    def levels(chart) -> dict:
        """label -> value of the dashed levels of a layered chart."""
        spec = chart.to_dict()
        rows = [row for data in spec["datasets"].values() for row in data if set(row) == {"baseline", "label"}]
        return {row["label"]: row["baseline"] for row in rows}

    assert levels(reports.loss_chart(run)) == {"baseline B": pytest.approx(float(sim.baseline.mean()))}
    assert levels(reports.accuracy_chart(run)) == {}  # no chance level in the store: nothing drawn
    told = run_data(sim.assign(chance_accuracy=("attribute", np.full(6, 0.04))), "told", n_boot=0)
    assert levels(reports.accuracy_chart(told)) == {"chance": pytest.approx(0.04)}
    population = json.dumps(reports.population_chart(told).to_dict())  # the run page's first section
    assert population.count('"label": "chance"') == 1 and '"format": ".1%", "title": "accuracy"' in population


def test_chart_functions_accept_a_dataset_too(sim):
    chart = reports.attention_chart(sim.isel(step=slice(0, 20)))
    assert len(chart.hconcat) == 3


def test_sweep_charts_say_what_they_need(run):
    for make, needs in ((reports.scaling_chart, "two or more N"), (reports.alpha_chart, "two or more alpha"),
                        (reports.warmup_chart, "warm-up runs"), (reports.finetune_chart, "fine-tuning runs"),
                        (reports.known_chart, "two or more runs")):
        with pytest.raises(PhasefitError, match=needs):
            make([run])
    assert reports.sweep_charts([run]) == {}


def test_pages_stay_small_whatever_the_population(tmp_path):
    """Pages carry aggregates: ten times the individuals adds almost nothing to a page."""
    sizes = {}
    for n in (300, 3000):
        ds = simulate(n_individuals=n, n_heldout=n // 4, n_steps=16000, n_evals=200, n_layers=8, n_heads=8, seed=1)
        path = tmp_path / f"n{n}.html"
        chart = reports.run_page(run_data(ds, f"n{n}", n_boot=0), path)
        assert isinstance(chart, alt.VConcatChart)
        sizes[n] = path.stat().st_size
    assert sizes[3000] < 3_000_000
    assert abs(sizes[3000] - sizes[300]) < 0.05 * sizes[300]


def test_compact_keeps_significant_digits():
    import pandas as pd

    frame = compact(pd.DataFrame({"x": [4.123456e-4, 12345.678, np.nan, 0.0], "n": [1, 2, 3, 4]}))
    assert frame["x"].tolist()[:2] == [4.1235e-4, 12346.0] and np.isnan(frame["x"][2]) and frame["n"].dtype == int
