"""Confidence intervals: bootstrap over individuals covers the truth at about its nominal rate."""

from __future__ import annotations

import numpy as np
import pytest

import phasefit
from phasefit.bootstrap import percentile_interval, replicate_curves, resample_weights, seed_interval
from phasefit.detectors import ThresholdDetector
from phasefit.simulate import expected_curve, simulate
from phasefit.summary import population_curves, split_curve, summarise


@pytest.fixture(scope="module")
def repeated_runs():
    """40 runs of 200 individuals that differ only in the draw of individuals and facts.

    Their estimand is the threshold rules applied to the infinite-population curve.
    """
    runs = []
    for seed in range(40):
        ds = simulate(n_individuals=200, n_heldout=10, noise=0.0, seed=100 + seed)
        target = ThresholdDetector().fit(expected_curve(ds)).boundaries_
        found = phasefit.detect(ds, "threshold", n_boot=100, per_fact=False, seed=seed)
        runs.append((target, found))
    return runs


def test_intervals_cover_the_truth_at_about_their_nominal_rate(repeated_runs):
    for key, ci_key in (("t1", "t1_ci"), ("t2", "t2_ci"), ("t3", "t3_ci"), ("plateau_length", "plateau_ci")):
        covered = [getattr(found, ci_key)[0] <= getattr(target, key) <= getattr(found, ci_key)[1]
                   for target, found in repeated_runs]
        rate = np.mean(covered)
        # 95% nominal; with 40 runs a calibrated interval covers 34 or more with 99% probability.
        assert rate >= 0.82, f"{key}: the 95% interval covered the truth in {rate:.0%} of runs"


def test_interval_widths_match_the_spread_across_runs(repeated_runs):
    for key, ci_key in (("t2", "t2_ci"), ("plateau_length", "plateau_ci")):
        estimates = np.array([getattr(found, key) for _, found in repeated_runs])
        widths = np.array([np.diff(getattr(found, ci_key))[0] for _, found in repeated_runs])
        ratio = np.mean(widths / 3.92) / np.std(estimates, ddof=1)
        assert 0.6 < ratio < 1.6, f"{key}: bootstrap sd / sd across runs = {ratio:.2f}"


def test_replicate_curves_resample_individuals():
    ds = simulate(n_individuals=100, n_heldout=10, seed=1)
    summary = summarise(ds)
    curve = split_curve(ds, population_curves(summary))
    rng = np.random.default_rng(0)
    reps = replicate_curves(summary.individual, "train", curve.step, 300, rng, ("loss_sum", "n_correct"))
    assert reps["loss_sum"].shape == (300, len(curve.step))
    # The replicates centre on the observed curve and spread like a mean of 100 individuals.
    assert np.allclose(reps["loss_sum"].mean(axis=0), curve.loss, rtol=0.02)
    per_individual = (ds["loss"].where(ds["split"] == "train").mean("attribute")).values
    expected_sd = np.nanstd(per_individual, axis=1) / np.sqrt(100)
    assert np.median(reps["loss_sum"].std(axis=0) / expected_sd) == pytest.approx(1.0, abs=0.15)
    weights = resample_weights(50, 10, rng)
    assert (weights.sum(axis=1) == 50).all()


def test_interval_helpers():
    assert percentile_interval(np.arange(101.0), 0.9) == pytest.approx((5.0, 95.0))
    assert percentile_interval(np.array([1.0, np.nan, np.nan, np.nan])) is None  # mostly undefined
    mean, lo, hi = seed_interval([10.0, 12.0, 14.0])
    assert mean == 12.0 and lo == pytest.approx(12 - 4.303 * 2 / np.sqrt(3), rel=1e-3) and hi > 14
    assert seed_interval([5.0]) is None
