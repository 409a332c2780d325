"""The simulator's messiness does what it says: the detectors are tested on more than their own model."""

from __future__ import annotations

import numpy as np
import pytest

from phasefit.simulate import expected_curve, simulate, truth
from phasefit.summary import population_curves, split_curve, summarise


def train_curve(ds):
    return split_curve(ds, population_curves(summarise(ds)))


def test_the_defaults_are_the_detectors_model_a_flat_plateau_at_the_baseline():
    ds = simulate(n_individuals=300, n_heldout=30, seed=1)
    sim = truth(ds)
    assert sim["condition"]["t2"] == sim["t2"] == 4000
    curve = expected_curve(ds)
    plateau = (curve.step > 1.2 * sim["t1"]) & (curve.step < 0.8 * sim["t2"])
    assert np.allclose(curve.loss[plateau], curve.baseline)


def test_a_drifting_plateau_sinks_below_the_baseline_by_the_drift():
    ds = simulate(n_individuals=300, n_heldout=30, seed=1, drift=0.04, noise=0.0, fact_noise=0.0)
    sim, curve = truth(ds), expected_curve(ds)
    just_before = curve.loss[np.searchsorted(curve.step, sim["t2"]) - 1] / curve.baseline
    assert 0.96 < just_before < 0.97  # most of the 4% sunk by the evaluation before t2
    measured = train_curve(ds)
    k = np.searchsorted(measured.step, sim["t2"]) - 1
    assert measured.loss[k] == pytest.approx(curve.loss[k], rel=0.005)  # the store holds the same curve


def test_shared_step_noise_is_autocorrelated_and_spikes_hit_one_evaluation():
    clean = train_curve(simulate(n_individuals=400, n_heldout=10, seed=2, noise=0.0))
    noisy = train_curve(simulate(n_individuals=400, n_heldout=10, seed=2, noise=0.03, noise_ar=0.9,
                                 spikes=((12000, 1.3),)))
    ratio = noisy.loss / clean.loss - 1
    spike = int(np.argmin(np.abs(noisy.step - 12000)))
    assert ratio[spike] > 0.2  # the spike, on top of the noise
    rest = np.delete(ratio, spike)
    assert np.corrcoef(rest[:-1], rest[1:])[0, 1] > 0.6 and 0.015 < rest.std() < 0.06


def test_seeds_of_one_condition_differ_by_the_stated_spread():
    t2 = [truth(simulate(n_individuals=50, n_heldout=5, n_evals=30, seed=s, seed_spread=0.1))["t2"] for s in range(40)]
    assert np.std(np.log(t2)) == pytest.approx(0.1, rel=0.3)
    assert truth(simulate(n_individuals=50, n_heldout=5, n_evals=30, seed=3, seed_spread=0.1))["condition"]["t2"] == 4000


def test_an_individuals_facts_can_be_learned_together():
    def within(effect):
        acq = np.log(simulate(n_individuals=600, n_heldout=5, n_evals=30, seed=4, final_accuracy=1.0,
                              individual_effect=effect)["true_acquisition"].values[:600])
        return np.corrcoef(acq[:, 0], acq[:, 1])[0, 1]

    assert abs(within(0.0)) < 0.12 and within(0.6) > 0.4


def test_an_alpha_valley_makes_the_plateau_shortest_at_its_floor():
    import phasefit

    def run(alpha, **valley):
        ds = simulate(n_individuals=200, n_heldout=5, n_evals=60, t1=320, t2=1820, t3=5460, alpha=alpha, seed=6,
                      noise=0.0, **valley)
        return truth(ds), phasefit.detect(ds, n_boot=0, per_fact=False).plateau_length

    valley = {"alpha_valley": (0.7, 12.0, 3.2)}
    found = {a: run(a, **valley) for a in (0.4, 0.7, 1.0)}
    assert found[0.7][0]["plateau_length"] == pytest.approx(1500)
    assert found[0.4][0]["condition"]["plateau_length"] == pytest.approx(1500 * np.exp(12 * 0.3**2))
    assert found[1.0][0]["plateau_length"] == pytest.approx(1500 * np.exp(3.2 * 0.3**2))
    assert found[1.0][0]["t3"] / found[1.0][0]["t2"] == pytest.approx(3)  # the knowledge phase moves with t2
    for sim, measured in found.values():
        assert measured == pytest.approx(sim["plateau_length"], rel=0.1)  # the detectors see it
    kinked = run(1.0, alpha_valley=(0.7, 12.0, 3.2, 1.5))[0]["plateau_length"]
    assert kinked == pytest.approx(1500 * np.exp(3.2 * 0.3**1.5))
    assert run(0.4)[0]["t2"] == 1820  # off by default: alpha changes the exposures only


def test_step_noise_over_training_steps_is_one_path_whatever_the_grid_reads():
    def ratio(n_evals, **noise):
        kw = dict(n_individuals=100, n_heldout=10, seed=4, n_evals=n_evals, fact_noise=0.0, flicker=0.0)
        noisy, clean = train_curve(simulate(**kw, noise=0.03, **noise)), train_curve(simulate(**kw, noise=0.0))
        return dict(zip(noisy.step.tolist(), (noisy.loss / clean.loss).tolist()))

    coarse, fine = ratio(20, noise_timescale=100.0), ratio(200, noise_timescale=100.0)
    shared = sorted(set(coarse) & set(fine) - {0})
    assert len(shared) >= 3 and all(coarse[s] == pytest.approx(fine[s], rel=1e-5) for s in shared)
    assert np.std(list(fine.values())) > 0.01  # and it is noise
    per_evaluation = ratio(20, noise_ar=0.5), ratio(200, noise_ar=0.5)  # drawn per evaluation: grids differ
    assert any(per_evaluation[0][s] != pytest.approx(per_evaluation[1][s], rel=1e-3) for s in shared)
