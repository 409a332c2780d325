"""The condition summary: seeds are the unit of inference, one row per condition."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

import phasefit
from phasefit.crossrun import crossrun
from phasefit.simulate import expected_curve, simulate

MESSY = dict(n_individuals=300, n_heldout=30, n_steps=16_000, t1=320, t2=4000, t3=10_400, n_evals=60, noise=0.01,
             noise_ar=0.5)


def _t_interval(values):
    values = np.asarray(values, dtype=float)
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return values.mean() - half, values.mean() + half


@pytest.fixture(scope="module")
def runs():
    """Three seeds of uniform sampling and of a warm-up (its plateau half as long; a 10%
    seed-to-seed spread of t2), and one seed of uniform sampling at another N."""
    found = [phasefit.detect(simulate(**dict(MESSY, t2=t2), seed=seed, sampling_kind=kind, seed_spread=0.1),
                             n_boot=40, per_fact=False) for kind, t2 in (("uniform", 4000), ("warmup", 2000))
             for seed in (1, 2, 3)]
    found.append(phasefit.detect(simulate(**dict(MESSY, n_individuals=600), seed=4), n_boot=40, per_fact=False))
    return found


def test_a_condition_with_seeds_is_summarised_by_a_t_interval_over_its_seeds(runs):
    table = crossrun(runs).conditions
    assert len(table) == 3 and list(table["n_seeds"]) == [3, 3, 1]
    uniform = table.iloc[0]
    assert uniform["condition"] == "uniform" and uniform["runs"] == [p.run for p in runs[:3]]
    assert uniform["ci_kind"] == "seeds: t interval over 3 seeds' estimates"
    for q in ("t1", "t2", "t3", "plateau_length", "final_accuracy", "hallucination_onset", "hallucination_lag"):
        values = [getattr(p, q) for p in runs[:3]]
        assert uniform[q] == pytest.approx(np.mean(values))
        assert (uniform[f"{q}_lo"], uniform[f"{q}_hi"]) == pytest.approx(_t_interval(values))
    # the seed-level interval is wider than any one seed's: it holds the seed-to-seed spread
    assert uniform["t2_hi"] - uniform["t2_lo"] > 3 * max(p.t2_ci[1] - p.t2_ci[0] for p in runs[:3])
    assert table.iloc[1]["condition"] == "warm-up" and table.iloc[1]["t2"] < uniform["t2"]


def test_a_condition_with_one_seed_keeps_its_runs_interval_and_says_so(runs):
    single = crossrun(runs).conditions.iloc[2]
    own = runs[-1]
    assert single["runs"] == [own.run] and single["ci_kind"] == own.ci_kind and single["ci_kind"].startswith("one seed")
    assert [single["t2_lo"], single["t2_hi"]] == pytest.approx(own.t2_ci)
    assert single["conditions"] == "N=600 sampling=uniform"


def test_a_quantity_some_seeds_miss_is_summarised_over_those_that_have_it(runs):
    rows = [p.to_dict() for p in runs[:3]]
    rows[0]["hallucination_onset"] = None
    rows[1]["hallucination_onset"] = None
    row = crossrun(rows).conditions.iloc[0]
    assert row["hallucination_onset"] == pytest.approx(runs[2].hallucination_onset)
    assert row["hallucination_onset_lo"] is None and row["t2_lo"] is not None
    assert row["notes"] == ["hallucination_onset: measured in 1 of 3 seeds: no seed-level interval"]


def test_intervention_measures_are_summarised_across_seeds(runs):
    rows = []
    for p, diff in zip(runs[:3], (-1200.0, -1000.0, -1100.0)):
        d = p.to_dict()
        d["patching"] = {"t2_difference": diff, "t2_difference_ci": [diff - 50, diff + 50]}
        rows.append(d)
    row = crossrun(rows).conditions.iloc[0]
    assert row["patching_t2_difference"] == pytest.approx(-1100)
    assert (row["patching_t2_difference_lo"], row["patching_t2_difference_hi"]) == pytest.approx(
        _t_interval([-1200, -1000, -1100]))
    assert "finetune_collapse_step" not in row  # only the measures some run has


def test_seed_level_intervals_cover_the_conditions_value():
    """A reduced Monte Carlo of benchmarks/bench_seed_intervals.py (its seeds are 1000 and up;
    these are below 100): 3 seeds with a 10% spread, 1% AR(1) step noise. The t interval over
    seeds covers the condition's noise-free t2 at about its nominal rate; one seed's interval
    over individuals would cover it in a few replicates only."""
    condition = phasefit.detect(expected_curve(simulate(**MESSY, seed=0)))
    covered, one_seed = [], []
    for r in range(16):
        found = [phasefit.detect(simulate(**MESSY, seed=10 + 3 * r + k, seed_spread=0.1), n_boot=30, per_fact=False)
                 for k in range(3)]
        row = crossrun(found).conditions.iloc[0]
        covered.append(row["t2_lo"] <= condition.t2 <= row["t2_hi"])
        one_seed.append(found[0].t2_ci[0] <= condition.t2 <= found[0].t2_ci[1])
    assert np.mean(covered) >= 0.8
    assert np.mean(one_seed) < 0.5


def test_the_conditions_table_and_json(runs):
    out = crossrun(runs)
    assert out.has_seeds()
    text = out.format_conditions().splitlines()
    assert text[0].split()[:2] == ["conditions", "seeds"] and "t2 [95% CI]" in text[0]
    assert "seeds: t interval over 3 seeds' estimates" in text[-1] and "one seed" in text[-1]
    rows = json.loads(json.dumps(out.to_dict()))["conditions"]
    assert [r["ci_kind"].split(":")[0] for r in rows] == ["seeds", "seeds", "one seed"]
    assert not crossrun(runs[:1] + runs[-1:]).has_seeds()  # two single seeds: no condition has seeds
