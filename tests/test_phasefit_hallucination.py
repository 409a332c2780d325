"""Hallucination: held-out loss rises above the baseline as knowledge appears."""

from __future__ import annotations

import numpy as np
import pytest

import phasefit
from phasefit.hallucination import onset
from phasefit.simulate import expected_curve, simulate, truth


def test_onset_lag_and_confidence_gap():
    ds = simulate(n_individuals=500, n_heldout=500, hallucination_onset=4500, seed=1)
    phases = phasefit.detect(ds, n_boot=100, per_fact=False)
    # The estimand: the rule (2% above the baseline, for good) on the infinite-population curve;
    # it sits a little after the corner where the rise starts.
    target = onset(expected_curve(ds, "heldout")).onset
    assert 0 < target - truth(ds)["hallucination_onset"] < 0.02 * 16000
    assert abs(phases.hallucination_onset - target) / 16000 < 0.01
    lo, hi = phases.hallucination_onset_ci
    assert lo <= target <= hi
    assert phases.hallucination_lag == pytest.approx(phases.hallucination_onset - phases.t2)
    gap = phases.gap
    late = gap.sel(step=slice(12000, None))
    early = gap.sel(step=slice(1000, 3000))
    # Less confident on unseen individuals once knowledge is there, not before.
    assert (late["top_prob_gap"] < -0.1).all() and (late["entropy_gap"] > 0.2).all()
    assert np.abs(early["top_prob_gap"]).max() < 0.05
    assert (late["loss_heldout"] > ds["baseline"].mean().item()).all()


def test_no_heldout_individuals_or_no_hallucination_are_notes_not_errors():
    no_heldout = phasefit.detect(simulate(n_individuals=200, n_heldout=0, seed=2), n_boot=0)
    assert no_heldout.hallucination_onset is None
    assert any("no held-out individuals" in n for n in no_heldout.notes)
    calibrated = phasefit.detect(simulate(n_individuals=200, n_heldout=100, hallucination=0.0, seed=2), n_boot=0)
    assert calibrated.hallucination_onset is None
    assert any("no hallucination onset" in n for n in calibrated.notes)
