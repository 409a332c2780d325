"""Detectors recover known boundaries from simulated runs, and follow the estimator interface."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import phasefit
from phasefit.curve import Curve, estimate_noise
from phasefit.summary import population_curves, split_curve
from phasefit.detectors import (AutoDetector, ChangepointDetector, SegmentedFitDetector, ThresholdDetector,
                                make_detector)
from phasefit.errors import PhasefitError
from phasefit.simulate import simulate, truth

DETECTORS = {"threshold": ThresholdDetector, "changepoint": ChangepointDetector, "fit": SegmentedFitDetector,
             "auto": AutoDetector}
# Boundaries (t1, t2, t3) of a 16k-step run: the study's shape, a short and a long plateau.
SCENARIOS = [(320, 4000, 10400), (200, 1500, 5000), (500, 8000, 14000)]


def _curve(ds: xr.Dataset) -> Curve:
    return split_curve(ds, population_curves(ds))


@pytest.fixture(scope="module")
def realistic_curves():
    """Simulated runs at realistic noise: 1000 individuals, 0.2% step-to-step training noise."""
    out = []
    for boundaries in SCENARIOS:
        for seed in (0, 1):
            ds = simulate(n_individuals=1000, n_heldout=10, t1=boundaries[0], t2=boundaries[1], t3=boundaries[2],
                          noise=0.002, seed=seed)
            out.append((_curve(ds), truth(ds)))
    return out


@pytest.mark.parametrize("name", list(DETECTORS))
def test_every_detector_recovers_boundaries_within_2_percent(name, realistic_curves):
    for curve, true in realistic_curves:
        found = make_detector(name).fit(curve).boundaries_
        for key in ("t1", "t2", "t3"):
            value = getattr(found, key)
            assert value is not None, (name, key, found.notes)
            error = abs(value - true[key]) / curve.run_length
            assert error <= 0.02, f"{name} {key}: {value:.0f} vs true {true[key]:.0f} ({error:.1%} of the run)"


def test_detectors_follow_the_estimator_conventions():
    curve = _curve(simulate(n_individuals=300, n_heldout=10, seed=2))
    for cls in DETECTORS.values():
        detector = cls()
        assert not any(k.endswith("_") for k in vars(detector)), "constructors only store parameters"
        assert detector.fit(curve) is detector
        assert {"t1_", "t2_", "t3_", "notes_", "diagnostics_"} <= set(vars(detector))
        twin = detector.clone()
        assert twin.get_params().keys() == detector.get_params().keys()
        assert not hasattr(twin, "t2_")
    with pytest.raises(PhasefitError, match="unknown method"):
        make_detector("magic")


def _synthetic(loss, baseline=6.8, n_steps=16000):
    steps = np.linspace(0, n_steps, len(loss))
    return Curve(steps, np.asarray(loss, dtype=float), baseline, None, n_steps)


@pytest.mark.parametrize("name", ["threshold", "changepoint", "fit", "auto"])
def test_a_plateau_that_never_ends_gives_no_t2_and_says_why(name):
    steps = np.linspace(0, 16000, 200)
    loss = 6.8 + 10 * np.clip(1 - np.log1p(steps) / np.log1p(300), 0, 1)
    found = make_detector(name).fit(_synthetic(loss)).boundaries_
    assert found.t1 is not None and abs(found.t1 - 300) < 320
    assert found.t2 is None and found.t3 is None
    assert any("plateau" in n for n in found.notes), found.notes


@pytest.mark.parametrize("name", ["threshold", "changepoint", "fit", "auto"])
def test_a_loss_that_never_reaches_the_baseline_gives_no_t1(name):
    loss = np.linspace(20, 12, 200)
    found = make_detector(name).fit(_synthetic(loss)).boundaries_
    assert (found.t1, found.t2, found.t3) == (None, None, None)
    assert any("never reached the baseline" in n for n in found.notes), found.notes


def test_auto_reports_its_first_detector_and_notes_a_disagreement():
    curve = _curve(simulate(n_individuals=500, n_heldout=10, seed=4))
    far = SegmentedFitDetector(max_knots=1)  # one knot for three corners: led astray, and listed first
    auto = AutoDetector(detectors=(far, ChangepointDetector(), ThresholdDetector())).fit(curve)
    assert auto.t2_ == auto.estimates_["fit"].t2 and auto.sources_["t2"] == "fit"
    assert any(n.startswith("t2: detectors disagree") and "reporting fit" in n for n in auto.notes_)


def test_auto_takes_the_median_of_the_others_where_the_definition_finds_nothing():
    curve = _curve(simulate(n_individuals=500, n_heldout=10, seed=4))
    blind = ThresholdDetector(t2_tol=0.9)  # a band no plateau leaves: no t2
    auto = AutoDetector(detectors=(blind, ChangepointDetector(), SegmentedFitDetector())).fit(curve)
    others = sorted(b.t2 for name, b in auto.estimates_.items() if name != "threshold")
    assert auto.estimates_["threshold"].t2 is None and len(others) == 2
    assert auto.t2_ == pytest.approx(others[0]) and auto.sources_["t2"] != "threshold"  # the lower median


def test_the_regrid_changepoint_penalty_is_derived_from_the_estimated_noise():
    ds_quiet = simulate(n_individuals=2000, n_heldout=10, noise=0.001, seed=5)
    ds_noisy = simulate(n_individuals=2000, n_heldout=10, noise=0.02, seed=5)
    quiet, noisy = (ChangepointDetector(cost="l2").fit(_curve(d)) for d in (ds_quiet, ds_noisy))
    assert estimate_noise(_curve(ds_noisy)) > 3 * estimate_noise(_curve(ds_quiet))
    for fitted in (quiet, noisy):  # BIC: 2 sigma^2 log(n), sigma measured on the segmented signal
        d = fitted.diagnostics_
        assert d["penalty"] == pytest.approx(2 * d["signal_noise"] ** 2 * np.log(fitted.grid - 1))
    assert noisy.diagnostics_["penalty"] > 2 * quiet.diagnostics_["penalty"]


@pytest.mark.parametrize("search,cost", [("pelt", "l2"), ("dynp", "l2"), ("bottomup", "l2"), ("pelt", "clinear")])
def test_changepoint_searches_and_costs_run(search, cost):
    curve = _curve(simulate(n_individuals=500, n_heldout=10, seed=6))
    found = ChangepointDetector(search=search, cost=cost).fit(curve).boundaries_
    assert found.t2 is not None and abs(found.t2 - 4000) / 16000 < 0.05


def test_noise_estimate_matches_the_injected_noise():
    steps = np.linspace(0, 16000, 400)
    smooth = 6.8 - 6 * np.clip((np.log1p(steps) - np.log(4000)) / 1.0, 0, 1)
    rng = np.random.default_rng(0)
    for sigma in (0.01, 0.1):
        noisy = smooth + sigma * rng.standard_normal(len(steps))
        assert estimate_noise(_synthetic(noisy)) == pytest.approx(sigma, rel=0.25)


def test_detect_takes_plain_curves_from_other_trainers():
    ds = simulate(n_individuals=500, n_heldout=10, seed=7)
    curve = _curve(ds)
    series = pd.Series(curve.loss, index=curve.step, name="my-run")
    array = xr.DataArray(curve.loss, dims="step", coords={"step": curve.step}, attrs={"baseline": curve.baseline})
    from_series = phasefit.detect(series, baseline=curve.baseline)
    from_array = phasefit.detect(array)
    assert from_series.run == "my-run"
    assert from_series.t2 == pytest.approx(from_array.t2)
    assert abs(from_series.t2 - truth(ds)["t2"]) / 16000 < 0.02
    assert from_series.t2_ci is None and any("no confidence intervals" in n for n in from_series.notes)
    with pytest.raises(PhasefitError, match="baseline"):
        phasefit.detect(series)


def test_the_command_line_knows_every_detector():
    from phasefit.commands import METHODS
    from phasefit.detectors import DETECTORS

    assert set(METHODS) == set(DETECTORS)
