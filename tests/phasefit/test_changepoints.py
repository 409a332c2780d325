"""The changepoint search on principle, on simulated curves with known corners.

The penalty was chosen on seeds 0-2 (benchmarks/bench_detect.py
--select's scenarios, docs/phasefit.md); these tests use seeds 50-52, disjoint from them.
"""

from __future__ import annotations

import numpy as np
import pytest

from phasefit.detectors import ChangepointDetector
from phasefit.detectors.changepoint import optimal_partition
from phasefit.simulate import simulate, truth
from phasefit.summary import population_curves, split_curve

SEEDS = (50, 51, 52)
CORNERS = [(320, 4000, 10400), (200, 1500, 5000), (500, 8000, 14000)]


def _run(n_evals, corners, seed, **kw):
    t1, t2, t3 = corners
    return simulate(n_individuals=1000, n_heldout=10, noise=0.01, noise_ar=0.5, n_evals=n_evals, seed=seed,
                    t1=t1, t2=t2, t3=t3, **kw)


@pytest.mark.parametrize("n_evals", [20, 60, 200])
def test_at_most_five_changes_on_three_corner_curves_with_correlated_step_noise(n_evals):
    for corners in CORNERS:
        for seed in SEEDS:
            ds = _run(n_evals, corners, seed)
            found = ChangepointDetector().fit(split_curve(ds, population_curves(ds)))
            n_changes = found.diagnostics_["n_changes"]
            assert 2 <= n_changes <= 5, (n_evals, corners, seed, n_changes, found.diagnostics_["knots"])
            if n_evals == 200:  # fewer evaluations leave 1-3 on a short plateau: see docs/phasefit.md
                for key in ("t1", "t2", "t3"):
                    error = abs(getattr(found, f"{key}_") - truth(ds)[key]) / 16000
                    assert error <= 0.02, (n_evals, corners, seed, key, error)


def test_the_exact_search_finds_the_segmentation_of_ruptures_pelt():
    import ruptures as rpt
    from ruptures.base import BaseCost

    rng = np.random.default_rng(50)
    x = np.sort(rng.uniform(0, 10, 120))
    y = np.where(x < 3, 10 - 3 * x, np.where(x < 6, 1, 1 - (x - 6))) + 0.3 * rng.standard_normal(len(x))
    w = rng.uniform(0.5, 2, len(x))

    class Line(BaseCost):  # the same cost, one piece at a time, as ruptures' own search sees it
        model, min_size = "line", 2

        def fit(self, signal):
            self.signal = signal
            return self

        def error(self, start, end):
            xs, ys, ws = x[start:end], y[start:end], w[start:end]
            coef = np.polyfit(xs, ys, 1, w=np.sqrt(ws))
            return float(np.sum(ws * (ys - np.polyval(coef, xs)) ** 2))

    pen = 3 * 0.3**2 * np.log(len(x))
    expected = rpt.Pelt(custom_cost=Line(), min_size=2, jump=1).fit(np.column_stack([x, y])).predict(pen=pen)
    assert optimal_partition(x, y, w, pen) == expected
    assert len(expected) - 1 == 2


def test_a_plateau_shorter_than_the_search_resolves_is_read_at_the_band_crossings():
    from phasefit.detectors.changepoint import read_unresolved_plateau
    from phasefit.rules import label_knots

    B = 4.0
    # A fall to 1.05 B, then one piece through the plateau band down to 0.5 B (a real run's bend).
    x = np.log1p([0.0, 100.0, 1000.0, 2000.0])
    levels = np.array([3 * B, 1.05 * B, 0.5 * B, 0.45 * B])
    knots = label_knots(np.expm1(x), levels, B, 0.1, 0.03, 0.1)
    assert knots.t1 == knots.t2 == pytest.approx(100.0)  # the knots alone leave no plateau
    found = read_unresolved_plateau(knots, x, levels, B, 0.1, 0.03)
    share = (1.05 - 0.97) / (1.05 - 0.5)  # where the piece passes B (1 - 0.03)
    assert found.t1 == knots.t1
    assert found.t2 == pytest.approx(np.expm1(x[1] + share * (x[2] - x[1])))
    # One piece from above the t1 band to below the t2 band: both are its crossings.
    levels = np.array([3 * B, 1.5 * B, 0.5 * B, 0.45 * B])
    found = read_unresolved_plateau(label_knots(np.expm1(x), levels, B, 0.1, 0.03, 0.1), x, levels, B, 0.1, 0.03)
    assert found.t1 == pytest.approx(np.expm1(x[1] + 0.4 * (x[2] - x[1])))
    assert found.t2 == pytest.approx(np.expm1(x[1] + 0.53 * (x[2] - x[1])))
    # A resolved plateau (a knot at each end inside the band) keeps its knots.
    x = np.log1p([0.0, 100.0, 500.0, 1000.0, 2000.0])
    levels = np.array([3 * B, 1.02 * B, 0.99 * B, 0.5 * B, 0.45 * B])
    knots = label_knots(np.expm1(x), levels, B, 0.1, 0.03, 0.1)
    assert (knots.t1, knots.t2) == pytest.approx((100.0, 500.0))
    assert read_unresolved_plateau(knots, x, levels, B, 0.1, 0.03) is knots


@pytest.mark.parametrize("seed", [1085, 1094])
def test_a_noise_free_curve_of_exact_straight_pieces_is_segmented(seed):
    # Noise-free pieces have zero local noise: weights unbounded by a floor made their sums
    # lose every digit (NaN lines, then a failed least squares) on these two curves.
    from phasefit.simulate import expected_curve

    ds = simulate(n_individuals=300, n_heldout=60, n_steps=16_000, t1=320, t2=4000, t3=10_400, n_evals=20,
                  seed=seed, seed_spread=0.1)
    found = ChangepointDetector().fit(expected_curve(ds))
    assert abs(found.t2_ - truth(ds)["t2"]) < 0.05 * 16_000
