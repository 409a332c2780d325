"""Per-fact acquisition: the step after which a fact stays correct, exposures, rank deciles."""

from __future__ import annotations

import numpy as np
import pytest

import phasefit
from phasefit import facts
from phasefit.simulate import simulate
from phasefit.summary import summarise


def _reference(ds, individual: int, attribute: int) -> float:
    """The definition, one fact at a time: first evaluation after which it stays correct."""
    loss = ds["loss"].values[:, individual, attribute]
    correct = ds["correct"].values[:, individual, attribute]
    evaluated = np.flatnonzero(~np.isnan(loss))
    for k, i in enumerate(evaluated):
        if correct[evaluated[k:]].all():
            return float(ds["step"].values[i])
    return float("nan")


@pytest.mark.parametrize("subset", [0, 60])
def test_acquisition_step_follows_the_definition(subset):
    # Flicker (correct by chance before acquisition) and a sparse evaluation plan make the
    # "stays correct" part of the definition matter.
    ds = simulate(n_individuals=200, n_heldout=20, flicker=0.05, eval_subset=subset, n_full=12, seed=3)
    acq = facts.acquisition(ds, summarise(ds))
    rng = np.random.default_rng(0)
    for i, a in zip(rng.integers(0, 200, 300), rng.integers(0, 6, 300)):
        expected = _reference(ds, i, a)
        got = acq["acquisition_step"].values[i, a]
        assert (np.isnan(expected) and np.isnan(got)) or expected == got, (i, a, expected, got)


def test_acquisition_matches_the_simulated_truth_without_flicker():
    ds = simulate(n_individuals=300, n_heldout=10, flicker=0.0, seed=4)
    acq = facts.acquisition(ds, summarise(ds))
    true = ds["true_acquisition"].values[:300]
    steps = ds["step"].values
    expected = np.where(np.isnan(true), np.nan, steps[np.minimum(np.searchsorted(steps, true), len(steps) - 1)])
    expected[true > steps[-1]] = np.nan
    np.testing.assert_array_equal(acq["acquisition_step"].values, expected)
    # Exposures at acquisition are the individual's exposures at that evaluation.
    got = acq["exposures_at_acquisition"].values
    index = np.searchsorted(steps, np.nan_to_num(expected))
    ref = ds["exposures"].values[index, np.arange(300)[:, None]]
    np.testing.assert_array_equal(got[~np.isnan(expected)], ref[~np.isnan(expected)])
    assert np.isnan(got[np.isnan(expected)]).all()


def test_frequent_individuals_are_learned_first_under_a_power_law():
    ds = simulate(n_individuals=2000, n_heldout=10, alpha=1.0, rank_effect=0.8, seed=5)
    phases = phasefit.detect(ds, n_boot=0)
    table = phases.acquisition_by_decile
    assert [row["decile"] for row in table] == list(range(10))
    medians = [row["step_median"] for row in table]
    assert medians[0] < medians[4] < medians[9]
    # The most frequent tenth has seen its facts far more often by the time it knows them.
    assert table[0]["exposures_median"] > 5 * table[9]["exposures_median"]
    shares = [row["acquired"] for row in table]
    assert shares[0] > shares[9] and np.mean(shares) == pytest.approx(0.9, abs=0.02)
    fraction = phases.acquired_fraction
    assert fraction.dims == ("step", "decile")
    assert (fraction.diff("step") >= 0).all()
    assert fraction.isel(step=-1).values == pytest.approx([r["acquired"] for r in table])
    assert len(phases.acquisition_by_attribute) == 6


def test_never_acquired_facts_are_missing_and_heldout_is_excluded():
    ds = simulate(n_individuals=100, n_heldout=30, final_accuracy=0.5, seed=6)
    acq = phasefit.detect(ds, n_boot=0).acquisition
    assert acq.sizes["individual"] == 100  # the train split only
    share = np.isfinite(acq["acquisition_step"].values).mean()
    assert share == pytest.approx(0.5, abs=0.06)
