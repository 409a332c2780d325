"""The verdicts of the study's claims (phasefit.claims) on runs with known answers.

Simulated stores (phasefit.simulate), detected as ``phasefit detect`` does, for the claims the
simulator can state (phases, scaling with N, the best alpha, hallucination lag, warm-up);
hand-made detection results for the intervention claims (patching, fine-tuning, sequential
groups), whose measures have their own tests. Each claim is shown coming out both ways.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import phasefit
from phasefit.claims import (INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, forgetting, hallucination, imbalance, judge,
                             patching, plateau_scaling, study_claims, three_phases, warmup)
from phasefit.simulate import set_config, simulate


def detected(ds, **config) -> dict:
    """A simulated run as ``phasefit detect`` writes it (its config changed by dotted keys first)."""
    if config:
        cfg = json.loads(ds.attrs["config"])
        for key, value in config.items():
            section, name = key.split("__")
            cfg.setdefault(section, {})[name] = value
        set_config(ds, cfg)
    return json.loads(json.dumps(phasefit.detect(ds, n_boot=0, per_fact=False).to_dict(), default=float))


def sim(t2: float, seed: int, n: int = 80, steps: int = 6000, **kw):
    return simulate(n_individuals=n, n_heldout=20, n_steps=steps, n_evals=60, t1=150, t2=t2, t3=2.2 * t2, seed=seed,
                    **kw)


def test_a_test_is_reproduced_only_on_the_claimed_side_and_failed_only_beyond_its_margin():
    assert judge(0.1, 0.5, +1) == REPRODUCED
    assert judge(-0.5, -0.1, -1) == REPRODUCED
    assert judge(-0.5, -0.1, +1) == NOT_REPRODUCED
    assert judge(-0.1, 0.3, +1) == INCONCLUSIVE  # straddles no effect
    assert judge(-0.1, 0.05, +1, margin=0.1) == NOT_REPRODUCED  # excludes every effect of 0.1 or more
    assert judge(-0.1, 0.15, +1, margin=0.1) == INCONCLUSIVE
    assert judge(None, None, +1) == INCONCLUSIVE


@pytest.fixture(scope="module")
def growing():
    """t2 = 4 N^0.8 over three N, three seeds each (the runs of a plateau_vs_n experiment)."""
    return [_with_n(detected(sim(4 * n**0.8, seed, seed_spread=0.05)), n) for n in (200, 400, 800) for seed in range(3)]


def _with_n(run: dict, n: int) -> dict:
    """A detected run as if its population were ``n`` (the simulated plateau is what carries N)."""
    run["config"]["world"]["n_individuals"] = n
    return run


def test_a_plateau_that_grows_as_a_power_of_n_reproduces_claims_1_and_2(growing):
    claim = plateau_scaling({"plateau_vs_n": growing})
    assert claim.verdict == REPRODUCED, claim
    (test,) = claim.tests
    assert test.ci[0] < 0.8 < test.ci[1]
    assert three_phases({"plateau_vs_n": growing}).verdict == REPRODUCED


def test_a_plateau_that_does_not_grow_with_n_is_not_reproduced():
    flat = [_with_n(detected(sim(900, seed, seed_spread=0.03)), n) for n in (200, 400, 800) for seed in range(3)]
    claim = plateau_scaling({"plateau_vs_n": flat})
    assert claim.verdict == NOT_REPRODUCED, claim
    assert abs(claim.tests[0].estimate) < 0.15


def test_runs_without_a_plateau_fail_claim_1():
    runs = [{"run": f"r{i}", "status": "complete", "config": {"sampling": {"kind": "uniform"}}, "t1": 100.0,
             "t2": None if i < 6 else 400.0, "t3": 900.0} for i in range(10)]
    assert three_phases({"plateau_vs_n": runs}).verdict == NOT_REPRODUCED
    runs = [dict(r, t2=400.0) for r in runs]
    assert three_phases({"plateau_vs_n": runs}).verdict == REPRODUCED
    at_chance = [dict(r, chance_accuracy=0.05, diagnostics={"plateau_accuracy": 0.3}) for r in runs]
    assert three_phases({"plateau_vs_n": at_chance}).verdict == NOT_REPRODUCED  # "plateau" far above chance


def alpha_runs(alpha0: float, seeds=range(3), **kw) -> list[dict]:
    out = []
    for alpha in (0.0, 0.3, 0.6, 0.9, 1.2):
        for seed in seeds:
            ds = sim(1500, seed, alpha=alpha, alpha_valley=(alpha0, 2.0, 2.0), seed_spread=0.03,
                     final_accuracy=0.9 - 0.3 * alpha, **kw)
            out.append(detected(ds))
    return out


def test_an_interior_best_alpha_reproduces_claim_4_and_a_best_alpha_at_the_edge_does_not():
    inside = imbalance({"alpha": alpha_runs(0.6)})
    valley = [t for t in inside.tests if t.measure.startswith("alpha")]
    assert valley[0].verdict == REPRODUCED and valley[0].ci[0] < 0.6 < valley[0].ci[1], inside
    knowledge = [t for t in inside.tests if t.measure.startswith("final accuracy")]
    assert knowledge[0].verdict == REPRODUCED  # lower final accuracy at the largest alpha
    assert inside.verdict == INCONCLUSIVE  # no celebrities experiment: the claim is not whole
    edge = imbalance({"alpha": alpha_runs(0.0)})
    assert [t for t in edge.tests if t.measure.startswith("alpha")][0].verdict == NOT_REPRODUCED
    assert edge.verdict == NOT_REPRODUCED


def test_celebrities_and_warmup_are_judged_against_uniform_runs_either_way():
    def runs(kind, t2, accuracy):
        return [detected(sim(t2, seed, final_accuracy=accuracy, sampling_kind=kind, seed_spread=0.03))
                for seed in range(3)]

    uniform = runs("uniform", 1500, 0.6)
    faster = imbalance({"celebrities": uniform + runs("celebrities", 800, 0.6)})
    assert [t.verdict for t in faster.tests] == [REPRODUCED]
    same = imbalance({"celebrities": uniform + runs("celebrities", 1500, 0.6)})
    assert [t.verdict for t in same.tests] == [NOT_REPRODUCED]
    assert warmup({"warmup": uniform + runs("warmup", 1500, 0.9)}).verdict == REPRODUCED
    assert warmup({"warmup": uniform + runs("warmup", 1500, 0.6)}).verdict == INCONCLUSIVE  # seeds spread more than 2 points
    assert warmup({"warmup": uniform + runs("warmup", 1500, 0.4)}).verdict == NOT_REPRODUCED


def test_a_hallucination_onset_at_the_plateau_end_reproduces_claim_6_and_a_late_one_does_not():
    at_end = [detected(sim(1500, seed, hallucination_onset=1500)) for seed in range(3)]
    lag = hallucination({"plateau_vs_n": at_end}).tests[0]
    assert lag.verdict == REPRODUCED, lag
    late = [detected(sim(1000, seed, hallucination_onset=1800)) for seed in range(3)]
    assert hallucination({"plateau_vs_n": late}).tests[0].verdict == NOT_REPRODUCED
    never = [detected(sim(1000, seed, hallucination=0.0)) for seed in range(3)]  # held-out stays at the baseline
    assert hallucination({"plateau_vs_n": never}).tests[0].verdict == NOT_REPRODUCED


def run(kind: str, seed: int, section: str | None = None, measures: dict | None = None, **config) -> dict:
    cfg: dict = {"seed": seed, "sampling": {"kind": kind}, "world": {}, "patch": {}, "train": {}}
    for key, value in config.items():
        part, name = key.split("__")
        cfg[part][name] = value
    out = {"run": f"{kind}-{seed}", "status": "complete", "config": cfg, "n_steps": 4000.0}
    if section:
        out[section] = measures
    return out


def test_patching_is_judged_on_paired_differences_with_the_reference():
    def patched(step, difference):
        return [run("uniform", s, "patching", {"t2_difference": difference + 20 * s, "reference_run": {"t2": 2000.0}},
                    patch__reference="ref", patch__reference_step=step) for s in range(3)]

    claim = patching({"patching": patched(-1, -1500) + patched(4, 600)})
    assert [t.verdict for t in claim.tests] == [REPRODUCED, REPRODUCED] and claim.verdict == REPRODUCED
    claim = patching({"patching": patched(-1, -1500) + patched(4, -900)})  # early patterns help too
    assert claim.tests[1].verdict == NOT_REPRODUCED and claim.verdict == NOT_REPRODUCED


def test_forgetting_needs_a_fast_deep_collapse_that_grows_with_new_individuals_and_shrinks_with_replay():
    def finetuned(new, replay, depth, step):
        return [run("finetune", s, "finetune", {"collapse_depth": depth + 0.003 * s, "collapse_step": step + 5 * s},
                    world__n_finetune=new, sampling__replay_weight=replay) for s in range(3)]

    def sequential(first, last, learn, forget):
        return [run("sequential", s, "sequential", {"visits": [{"learn_steps": first + s}, {"learn_steps": last + s}],
                                                    "median_learn_steps": learn, "median_forget_steps": forget + s},
                    sampling__n_groups=4, sampling__n_repeats=1) for s in range(3)]

    good = {"finetune": finetuned(100, 0.0, 0.3, 40) + finetuned(400, 0.0, 0.6, 30) + finetuned(400, 0.5, 0.2, 60),
            "sequential": sequential(300, 120, 200, 80)}
    claim = forgetting(good)
    assert claim.verdict == REPRODUCED, [(t.measure, t.verdict) for t in claim.tests]
    slow = dict(good, finetune=finetuned(100, 0.0, 0.3, 40) + finetuned(400, 0.0, 0.6, 1500)
                + finetuned(400, 0.5, 0.2, 60))
    assert forgetting(slow).verdict == NOT_REPRODUCED  # a collapse over a third of the run is not "short"
    no_replay_gain = dict(good, finetune=finetuned(100, 0.0, 0.3, 40) + finetuned(400, 0.0, 0.6, 30)
                          + finetuned(400, 0.5, 0.6, 30))
    assert forgetting(no_replay_gain).verdict == NOT_REPRODUCED


def test_every_claim_is_inconclusive_without_its_experiment():
    claims = study_claims({})
    assert [c.claim for c in claims] == [1, 2, 3, 4, 5, 6, 7]
    assert all(c.verdict == INCONCLUSIVE and c.notes for c in claims)
