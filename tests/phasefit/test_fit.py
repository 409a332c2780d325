"""The segmented fit's number of knots, Davies' test and replicates, on simulated curves.

The criterion (4 log n per knot in units of the residuals' long-run variance) was compared on
seeds 0-4 of benchmarks/bench_fit.py's scenarios; these tests use seeds 1000 and up.
"""

from __future__ import annotations

import numpy as np
import pytest

from phasefit.detectors import SegmentedFitDetector
from phasefit.simulate import simulate, truth
from phasefit.summary import population_curves, split_curve

SEEDS = (1000, 1001)
CORNERS = [(320, 4000, 10400), (200, 1500, 5000), (500, 8000, 14000)]


def _curve(n_evals, corners, seed, noise=0.01, **kw):
    t1, t2, t3 = corners
    ds = simulate(n_individuals=300, n_heldout=10, n_steps=16_000, noise=noise, noise_ar=0.5, n_evals=n_evals,
                  seed=seed, t1=t1, t2=t2, t3=t3, **kw)
    return split_curve(ds, population_curves(ds)), truth(ds)


@pytest.mark.parametrize("n_evals", [60, 200])
def test_three_to_five_knots_on_three_corner_curves_and_not_the_most_in_most(n_evals):
    counts = []
    for corners in CORNERS:
        for seed in SEEDS:
            found = SegmentedFitDetector().fit(_curve(n_evals, corners, seed)[0])
            counts.append(found.diagnostics_["n_knots"])
    assert all(3 <= k <= 5 for k in counts), counts
    assert np.mean(np.array(counts) == SegmentedFitDetector().max_knots) <= 0.5, counts


def test_t2_within_two_percent_of_the_run_at_200_evaluations():
    for corners in CORNERS:
        for seed in SEEDS:
            curve, true = _curve(200, corners, seed)
            t2 = SegmentedFitDetector().fit(curve).t2_
            assert t2 is not None and abs(t2 - true["t2"]) / 16_000 <= 0.02, (corners, seed, t2)


def test_davies_p_is_small_with_a_plateau_end_and_not_without():
    for corners in CORNERS:
        with_end = SegmentedFitDetector().fit(_curve(60, corners, 1002)[0]).diagnostics_["davies_p"]
        assert with_end < 0.01, (corners, with_end)
        t1 = corners[0]
        for no_end in (dict(final_accuracy=0.0), dict(t2=40_000, t3=100_000)):
            t2, t3 = no_end.pop("t2", corners[1]), no_end.pop("t3", corners[2])
            p = SegmentedFitDetector().fit(_curve(60, (t1, t2, t3), 1002, **no_end)[0]).diagnostics_["davies_p"]
            assert p > 0.01, (corners, no_end, p)


def test_replicates_choose_their_own_number_of_knots():
    curve, _ = _curve(60, CORNERS[0], 1003, noise=0.03)
    fitted = SegmentedFitDetector().fit(curve)
    replicate = fitted.for_replicates()
    assert replicate.init is None  # the number is not fixed any more
    k = fitted.diagnostics_["n_knots"]
    assert replicate.counts == (k - 1, k, k + 1)
    rng = np.random.default_rng(1003)
    chosen = set()
    for _ in range(30):  # the curve times fresh 3% step noise: what the bootstrap's draws do
        loss = curve.loss * (1 + 0.03 * rng.standard_normal(len(curve.loss)))
        chosen.add(fitted.for_replicates().fit(curve.with_loss(loss)).diagnostics_["n_knots"])
    assert len(chosen) > 1, chosen
    assert chosen <= {k - 1, k, k + 1}


def test_an_unknown_criterion_is_one_clear_error():
    curve, _ = _curve(60, CORNERS[0], 1000)
    with pytest.raises(ValueError, match="criterion must be one of"):
        SegmentedFitDetector(criterion="aic").fit(curve)
