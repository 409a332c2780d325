"""Statistics across runs: the scaling exponent, the best alpha, condition differences, seeds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import phasefit
from phasefit.crossrun import compare_conditions, crossrun, fit_alpha_optimum, fit_scaling
from phasefit.simulate import set_config, simulate


def test_scaling_fit_recovers_a_known_exponent_from_simulated_runs():
    # Plateau end ~ 0.43 * (16 N)^0.81 steps, as in the study; each run is simulated and
    # analysed end to end, so the detectors' errors are part of the test.
    runs = []
    for n in (250, 500, 1000, 2000, 4000):
        for seed in (0, 1):
            t2 = 0.43 * (16 * n) ** 0.81
            ds = simulate(n_individuals=n // 4, n_heldout=10, t1=150, t2=t2, t3=2.5 * t2, n_steps=16000, seed=seed)
            config = json.loads(ds.attrs["config"])
            config["world"]["n_individuals"] = n  # the population the run stands for
            set_config(ds, config)
            runs.append(phasefit.detect(ds, n_boot=50, per_fact=False))
    stats = crossrun(runs)
    fit = next(s for s in stats.scaling if s.quantity == "t2")
    assert fit.b == pytest.approx(0.81, abs=0.03)
    assert fit.b_ci[0] < 0.81 < fit.b_ci[1]
    assert fit.r2 > 0.99
    assert fit.a * 16**-0.81 == pytest.approx(0.43, rel=0.3)
    assert len(stats.seeds) and set(stats.seeds["n_seeds"]) == {2}


def test_scaling_fit_interval_covers_at_its_nominal_rate():
    rng = np.random.default_rng(0)
    n = np.repeat([4e3, 8e3, 16e3, 32e3, 64e3], 2)
    covered = 0
    for _ in range(200):
        t = 0.43 * n**0.81 * np.exp(0.05 * rng.standard_normal(len(n)))
        fit = fit_scaling(n, t)
        covered += fit.b_ci[0] <= 0.81 <= fit.b_ci[1]
    assert 0.9 <= covered / 200 <= 0.99
    assert fit_scaling([1000, 1000, 1000], [5, 6, 7]) is None  # one N: no slope


def test_alpha_optimum_with_interval():
    rng = np.random.default_rng(1)
    alpha = np.repeat(np.linspace(0, 1.4, 8), 2)
    true_min = 0.7
    plateau = 5000 * np.exp(0.8 * (alpha - true_min) ** 2 + 0.03 * rng.standard_normal(len(alpha)))
    found = fit_alpha_optimum(alpha, plateau)
    assert found.alpha_min == pytest.approx(true_min, abs=0.05)
    assert found.alpha_ci[0] < true_min < found.alpha_ci[1]
    assert found.predict(true_min) == pytest.approx(5000, rel=0.05)
    flat = fit_alpha_optimum(alpha, 5000 * np.exp(-alpha))  # monotone: no interior minimum
    assert flat.alpha_min is None and flat.notes


def test_condition_differences_with_intervals():
    frame = pd.DataFrame({
        "condition": ["uniform"] * 3 + ["warm-up 2000x2"] * 3,
        "plateau_length": [5000, 5200, 4900, 2000, 2100, 1900],
        "plateau_length_lo": [None] * 6, "plateau_length_hi": [None] * 6,
    })
    out = compare_conditions(frame, "condition", "plateau_length", "uniform").iloc[0]
    assert out["difference"] == pytest.approx(2000 - 5033.33, rel=1e-3)
    assert out["low"] < out["difference"] < out["high"] < 0 and out["method"] == "welch"
    single = pd.DataFrame({"condition": ["uniform", "warm-up"], "plateau_length": [5000.0, 2000.0],
                           "plateau_length_lo": [4900.0, 1950.0], "plateau_length_hi": [5100.0, 2050.0]})
    one = compare_conditions(single, "condition", "plateau_length", "uniform").iloc[0]
    assert one["method"] == "one seed" and one["ci_kind"].startswith("one seed")
    assert "cannot separate the conditions from seed-to-seed noise" in one["note"]
    assert one["high"] - one["low"] == pytest.approx(2 * np.hypot(100, 50), rel=1e-6)
    assert out["note"] is None and out["ci_kind"] == "seeds: Welch t interval over 3 and 3 seeds' estimates"


def test_a_comparison_of_single_seed_conditions_says_it_cannot_separate_them_from_seed_noise():
    runs = [phasefit.detect(simulate(n_individuals=300, n_heldout=10, t2=t2, seed=1, sampling_kind=kind), n_boot=40,
                            per_fact=False) for kind, t2 in (("uniform", 4000), ("warmup", 2000))]
    stats = crossrun(runs)
    assert set(stats.differences["method"]) == {"one seed"} and stats.differences["note"].notna().all()
    text = stats.format()
    assert "(one seed, N=300)" in text and "cannot separate the conditions from seed-to-seed noise" in text
    assert not stats.has_seeds()


def test_crossrun_compares_sampling_conditions_and_ignores_incomplete_runs():
    runs = []
    for kind, t2 in (("uniform", 4000), ("warmup", 2000)):
        for seed in (0, 1):
            ds = simulate(n_individuals=300, n_heldout=10, t2=t2, seed=seed, sampling_kind=kind)
            runs.append(phasefit.detect(ds, n_boot=50, per_fact=False))
    runs.append(phasefit.detect(simulate(n_individuals=300, n_heldout=10, seed=9, status="running"), n_boot=0))
    stats = crossrun(runs)
    row = stats.differences.query("quantity == 'plateau_length'").iloc[0]
    assert row["condition"] == "warm-up" and row["reference"] == "uniform"
    assert row["high"] < 0 and row["difference"] == pytest.approx(-2000, rel=0.1)
    assert any("not complete" in n for n in stats.notes)
    assert json.dumps(stats.to_dict())


def test_the_best_alpha_of_an_asymmetric_valley_is_read_near_its_floor():
    """A valley with a steep wall below its minimum and a shallow one above pulls a parabola
    fitted to the whole sweep toward the shallow side; one fitted near the shortest plateau is
    not. The grid's own bracket holds the truth whatever the shape."""
    alphas = np.repeat(np.linspace(0, 1.4, 8), 3)  # 3 seeds per alpha
    d = alphas - 0.65
    rng = np.random.default_rng(5)
    plateau = 1500 * (1 + 1.5 * (np.exp(2.5 * d) - 1 - 2.5 * d)) * np.exp(0.03 * rng.standard_normal(len(d)))
    found = fit_alpha_optimum(alphas, plateau)
    assert abs(found.alpha_min - 0.65) < 0.03 and found.alpha_bracket[0] <= 0.65 <= found.alpha_bracket[1]
    assert found.window == pytest.approx([0.4, 0.6, 0.8]) and found.ci_kind.startswith("seeds")
    whole = np.polyfit(alphas, np.log(plateau), 2)
    assert -whole[1] / (2 * whole[0]) < 0.59  # what a parabola over the whole sweep reads


def test_the_scaling_fit_reports_its_level_at_the_centre_and_names_censored_runs():
    n = np.repeat([250, 500, 1000, 2000], 3)
    t2 = list(4000 * (n / 1000) ** 0.81 * np.exp(0.03 * np.random.default_rng(3).standard_normal(len(n))))
    t2[-1] = None  # a run whose plateau had not ended by its last step
    fit = fit_scaling(n, t2, runs=[f"run{i}" for i in range(len(n))])
    assert fit.n_center == pytest.approx(np.exp(np.log(n[:-1]).mean()))
    truth = 4000 * (fit.n_center / 1000) ** 0.81
    low, high = fit.value_at_center_ci
    assert low < truth < high and (high - low) / truth < 0.1  # known to a few percent where the N are
    assert fit.predict(fit.n_center) == pytest.approx(fit.value_at_center)
    assert fit.n_runs == 11 and "run11" in fit.notes[0] and "censored" in fit.notes[0]
