"""Coverage of phasefit's intervals: Monte Carlo on simulated runs with known answers.

    python benchmarks/bench_coverage.py                 # every scenario, 40 replicates each
    python benchmarks/bench_coverage.py --replicates 8  # quicker, coarser
    python benchmarks/bench_coverage.py --only t2       # one family: t2, grid, scaling, alpha, lag

An interval is validated by how often it covers a known answer, not by agreement between our
own detectors. The runs come from ``phasefit.simulate`` with the messiness of real runs turned
on as each scenario says (shared step noise, AR(1) with correlation 0.5; plateau drift; a
known seed-to-seed spread of 10% in t2), and are measured with ``phasefit.detect``'s defaults
(method auto, 200 bootstrap replicates). What each interval should cover:

- t2 and plateau length, one seed: the run's own noise-free value (the detector on the run's
  expected curve, ``phasefit.simulate.expected_curve``), which is what an interval conditional
  on one run can at best cover;
- t2 and plateau length, 3 seeds: the condition's noise-free value (the detector on the
  expected curve of the condition, without the seed's shift), covered by the seed-level t
  interval of ``phasefit.crossrun`` (its ``seeds`` table);
- b of plateau end ~ a N^b: 4 population sizes x 3 seeds, true b = 0.81;
- the alpha of the shortest plateau: an asymmetric valley with its minimum at 0.7, 8 alphas
  x 2 seeds;
- the hallucination lag (onset - t2): a true lag of 0, covered by its paired interval;
- the evaluation grid: the same run on 20, 60 and 200 evaluations, t2 moving less than its
  interval's half-width.

Seeds 1000 and up, never used to choose a default (the tests and the defaults' tuning use
seeds below 100). Prints a table, then one JSON object per measurement: {"bench", "metric",
"value", "unit", "device", "config"}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import phasefit  # noqa: E402
from phasefit.bootstrap import seed_interval  # noqa: E402
from phasefit.crossrun import fit_alpha_optimum, fit_scaling  # noqa: E402
from phasefit.simulate import expected_curve, simulate  # noqa: E402

SEED0 = 1000  # held-out seeds: disjoint from those the tests and the defaults were chosen on
NOISES, DRIFTS, GRIDS = (0.0, 0.01, 0.03), (0.0, 0.04), (20, 60, 200)
SPREAD = 0.10  # seed-to-seed spread of the true t2 (relative sd)
RUN = dict(n_individuals=300, n_heldout=60, n_steps=16_000, t1=320, t2=4000, t3=10_400, noise_ar=0.5)


def device() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = "unknown"
    return f"cpu: {model}, {os.cpu_count()} cores"


def noise_free(ds, method: str = "auto") -> phasefit.Phases:
    """The detector on the run's expected curve: the value its intervals should cover."""
    return phasefit.detect(expected_curve(ds), method)


def covers(ci, value) -> float:
    return float(ci is not None and value is not None and ci[0] <= value <= ci[1])


def t2_family(replicates: int, rows: list) -> None:
    """t2 and plateau length: one seed against its own noise-free value, three against the
    condition's; the bias of one run's t2 against the simulator's corner."""
    for noise, drift, n_evals in itertools.product(NOISES, DRIFTS, GRIDS):
        scenario = dict(RUN, noise=noise, drift=drift, n_evals=n_evals)
        condition = noise_free(simulate(**scenario, seed=SEED0))
        one, three, bias = {"t2": [], "plateau_length": []}, {"t2": [], "plateau_length": []}, []
        for r in range(replicates):
            runs = [simulate(**scenario, seed=SEED0 + 1 + 3 * r + k, seed_spread=SPREAD) for k in range(3)]
            found = [phasefit.detect(ds) for ds in runs]
            own = noise_free(runs[0])
            one["t2"].append(covers(found[0].t2_ci, own.t2))
            one["plateau_length"].append(covers(found[0].plateau_ci, own.plateau_length))
            if found[0].t2 is not None:
                bias.append(found[0].t2 / phasefit.truth(runs[0])["t2"] - 1)
            for q in three:
                across = seed_interval([getattr(p, q) for p in found])
                three[q].append(covers(None if across is None else across[1:], getattr(condition, q)))
        config = {"noise": noise, "drift": drift, "n_evals": n_evals, "replicates": replicates}
        for q in ("t2", "plateau_length"):
            rows.append((f"coverage_{q}_one_seed", float(np.mean(one[q])), "share", config))
            rows.append((f"coverage_{q}_three_seeds", float(np.mean(three[q])), "share", config))
        rows.append(("median_bias_t2_one_seed", float(np.median(bias)) if bias else float("nan"), "share", config))
        print(f"  t2: noise {noise:.0%}, drift {drift:.0%}, {n_evals} evaluations done", file=sys.stderr, flush=True)


def grid_family(replicates: int, rows: list) -> None:
    """The same run (same individuals and facts) evaluated on 20, 60 and 200 steps: the share of
    runs whose t2 moves by less than the half-width of its 200-evaluation interval."""
    for noise in NOISES:
        within = []
        for r in range(replicates):
            found = {n: phasefit.detect(simulate(**dict(RUN, noise=noise, n_evals=n), seed=SEED0 + 500 + r), per_fact=False)
                     for n in GRIDS}
            ci = found[200].t2_ci
            moves = [abs(found[n].t2 - found[200].t2) for n in GRIDS if found[n].t2 is not None]
            within.append(float(ci is not None and len(moves) == len(GRIDS) and max(moves) < (ci[1] - ci[0]) / 2))
        rows.append(("t2_moves_less_than_its_interval", float(np.mean(within)), "share",
                     {"noise": noise, "grids": list(GRIDS), "replicates": replicates}))
        print(f"  grid: noise {noise:.0%} done", file=sys.stderr, flush=True)


def scaling_family(replicates: int, rows: list) -> None:
    """b of plateau end ~ a N^b over 4 population sizes x 3 seeds, true b = 0.81."""
    sizes, b_true = (250, 500, 1000, 2000), 0.81
    for noise in NOISES:
        hits, estimates = [], []
        for r in range(replicates):
            n_all, t2s = [], []
            for n, k in itertools.product(sizes, range(3)):
                t2 = 4000 * (n / 1000) ** b_true
                ds = simulate(n_individuals=n, n_heldout=20, n_steps=int(4 * t2) + 800, t1=200, t2=t2, t3=2.6 * t2,
                              noise=noise, noise_ar=0.5, n_evals=60, seed=SEED0 + 100 * r + 10 * sizes.index(n) + k,
                              seed_spread=SPREAD)
                n_all.append(n)
                t2s.append(phasefit.detect(ds, n_boot=0, per_fact=False).t2)
            fit = fit_scaling(n_all, t2s)
            hits.append(covers(None if fit is None else fit.b_ci, b_true))
            estimates.append(np.nan if fit is None else fit.b)
        config = {"noise": noise, "sizes": list(sizes), "seeds": 3, "replicates": replicates}
        rows.append(("coverage_b", float(np.mean(hits)), "share", config))
        rows.append(("median_b", float(np.nanmedian(estimates)), "", config))
        print(f"  scaling: noise {noise:.0%} done", file=sys.stderr, flush=True)


def valley(alpha: np.ndarray) -> np.ndarray:
    """Plateau length (steps) against alpha: minimum 1500 at 0.7, steep below, shallow above."""
    d = alpha - 0.7
    return 1500 * np.exp(np.where(d < 0, 3.0, 0.8) * d**2 * 4)


def alpha_family(replicates: int, rows: list) -> None:
    """The alpha of the shortest plateau on an asymmetric valley (true minimum 0.7)."""
    alphas = np.linspace(0.0, 1.4, 8)
    for noise in NOISES:
        hits, estimates = [], []
        for r in range(replicates):
            a_all, plateaus = [], []
            for a, k in itertools.product(alphas, range(2)):
                ds = simulate(n_individuals=300, n_heldout=20, n_steps=16_000, t1=320, t2=320 + float(valley(a)),
                              t3=3 * (320 + float(valley(a))), alpha=a, noise=noise, noise_ar=0.5, n_evals=60,
                              seed=SEED0 + 100 * r + 10 * list(alphas).index(a) + k, seed_spread=SPREAD)
                a_all.append(a)
                plateaus.append(phasefit.detect(ds, n_boot=0, per_fact=False).plateau_length)
            fit = fit_alpha_optimum(a_all, plateaus)
            ci = None if fit is None else fit.alpha_ci
            hits.append(covers(ci, 0.7))
            estimates.append(np.nan if fit is None or fit.alpha_min is None else fit.alpha_min)
        config = {"noise": noise, "alphas": len(alphas), "seeds": 2, "replicates": replicates}
        rows.append(("coverage_best_alpha", float(np.mean(hits)), "share", config))
        rows.append(("median_best_alpha", float(np.nanmedian(estimates)), "", config))
        print(f"  alpha: noise {noise:.0%} done", file=sys.stderr, flush=True)


def lag_family(replicates: int, rows: list) -> None:
    """The hallucination lag (onset - t2) with a true lag of 0: how often its interval (paired
    replicates) holds 0, its median and spread."""
    for noise, n_evals in itertools.product(NOISES, GRIDS):
        lags, hits = [], []
        for r in range(replicates):
            ds = simulate(**dict(RUN, noise=noise, n_evals=n_evals), seed=SEED0 + r, seed_spread=SPREAD)
            found = phasefit.detect(ds, per_fact=False)
            if found.hallucination_lag is not None:
                lags.append(found.hallucination_lag)
            hits.append(covers(found.hallucination_lag_ci, 0.0))
        config = {"noise": noise, "n_evals": n_evals, "true_lag": 0, "replicates": replicates}
        rows.append(("coverage_lag", float(np.mean(hits)), "share", config))
        rows.append(("median_lag", float(np.median(lags)) if lags else float("nan"), "steps", config))
        rows.append(("lag_sd", float(np.std(lags)) if lags else float("nan"), "steps", config))
        print(f"  lag: noise {noise:.0%}, {n_evals} evaluations done", file=sys.stderr, flush=True)


FAMILIES = {"t2": t2_family, "grid": grid_family, "scaling": scaling_family, "alpha": alpha_family,
            "lag": lag_family}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=40, help="Monte Carlo replicates per scenario (default 40)")
    parser.add_argument("--only", choices=sorted(FAMILIES), action="append", help="one family (repeatable)")
    args = parser.parse_args()
    rows: list = []
    start = time.perf_counter()
    for name in args.only or FAMILIES:
        FAMILIES[name](args.replicates, rows)
    where = device()
    print(f"coverage of phasefit's intervals on {where}, {time.perf_counter() - start:.0f} s "
          f"(nominal 95%; 'share' = share of replicates covered)")
    print(f"{'metric':<34} {'value':>8}  scenario")
    for metric, value, unit, config in rows:
        scenario = ", ".join(f"{k} {v}" for k, v in config.items() if k != "replicates")
        print(f"{metric:<34} {value:>8.3f}  {scenario}")
    for metric, value, unit, config in rows:
        print(json.dumps({"bench": "coverage", "metric": metric, "value": value, "unit": unit, "device": where,
                          "config": config}))


if __name__ == "__main__":
    main()
