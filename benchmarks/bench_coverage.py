"""Coverage of phasefit's intervals: Monte Carlo on simulated runs with known answers.

    python benchmarks/bench_coverage.py                 # every scenario, 40 replicates each
    python benchmarks/bench_coverage.py --replicates 8  # quicker, coarser
    python benchmarks/bench_coverage.py --only t2       # one family: t2, grid, scaling, alpha, lag
    python benchmarks/bench_coverage.py --tune          # the alpha family on the tuning seeds (0-99)

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
- b of plateau end ~ a N^b: 4 population sizes x 3 seeds, true b = 0.81 (and the median b
  with t2 read at each band of the t2 rule, 0.01, 0.02 and 0.05 of B);
- the alpha of the shortest plateau, 8 alphas x 2 seeds (or 1): the simulator's plateau made to
  depend on alpha through a stated valley (``alpha_valley``): the issue's asymmetric one
  (minimum at 0.7) at every noise and with one seed, a symmetric, a flat and a kinked one
  (not a parabola, minimum at 0.65) at 1%;
- the hallucination lag (onset - t2): a true lag of 0, covered by its paired interval;
- the evaluation grid: the same run (one path of step noise over its training steps) on 20, 60
  and 200 evaluations, the 200-evaluation t2
  inside the coarser grids' intervals (and, stricter, within the half-width of its own).

Seeds 1000 and up, never used to choose a default (the tests and the defaults' tuning use
seeds below 100; ``--tune`` runs the alpha family on those). Prints a table, then one JSON object per measurement: {"bench", "metric",
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
from phasefit.rules import T2_TOLS  # noqa: E402
from phasefit.simulate import expected_curve, simulate  # noqa: E402

SEED0 = 1000  # held-out seeds: disjoint from those the tests and the defaults were chosen on
NOISES, DRIFTS, GRIDS = (0.0, 0.01, 0.03), (0.0, 0.04), (20, 60, 200)
SPREAD = 0.10  # seed-to-seed spread of the true t2 (relative sd)
RUN = dict(n_individuals=300, n_heldout=60, n_steps=16_000, t1=320, t2=4000, t3=10_400, noise_ar=0.5)
# The grid family's step noise: one path over training steps (simulate's noise_timescale), so
# that the three grids read one run; 115 steps gives the lag-one correlation of 0.5 of RUN's
# noise_ar between the 80-step-apart evaluations of the 200-evaluation grid's linear part.
ONE_RUN_TIMESCALE = 115.0


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
    """The same run (same individuals and facts, and one path of step noise over its training
    steps) evaluated on 20, 60 and 200 steps: the share of
    runs whose 200-evaluation t2 lies inside the 20- and 60-evaluation intervals (t2 moves by
    less than the interval of the coarser grid, which says how well that grid places t2), and
    the share whose t2 moves by less than the half-width of the 200-evaluation interval."""
    for noise in NOISES:
        inside, within, each = [], [], {n: [] for n in GRIDS[:-1]}
        for r in range(replicates):
            run = dict(RUN, noise=noise, noise_timescale=ONE_RUN_TIMESCALE, seed=SEED0 + 500 + r)
            found = {n: phasefit.detect(simulate(**run, n_evals=n), per_fact=False) for n in GRIDS}
            fine = found[GRIDS[-1]]
            coarse = [found[n] for n in GRIDS[:-1]]
            for n in GRIDS[:-1]:
                ci = found[n].t2_ci
                each[n].append(float(fine.t2 is not None and ci is not None and ci[0] <= fine.t2 <= ci[1]))
            inside.append(float(all(each[n][-1] for n in GRIDS[:-1])))
            moves = [abs(p.t2 - fine.t2) for p in coarse if p.t2 is not None and fine.t2 is not None]
            ci = fine.t2_ci
            within.append(float(ci is not None and len(moves) == len(coarse) and max(moves) < (ci[1] - ci[0]) / 2))
        config = {"noise": noise, "grids": list(GRIDS), "replicates": replicates}
        rows.append(("t2_moves_less_than_its_interval", float(np.mean(inside)), "share", config))
        for n in GRIDS[:-1]:
            rows.append(("t2_moves_less_than_its_interval", float(np.mean(each[n])), "share", dict(config, grids=[n, GRIDS[-1]])))
        rows.append(("t2_moves_less_than_the_finest_half_width", float(np.mean(within)), "share", config))
        print(f"  grid: noise {noise:.0%} done", file=sys.stderr, flush=True)


def scaling_family(replicates: int, rows: list) -> None:
    """b of plateau end ~ a N^b over 4 population sizes x 3 seeds, true b = 0.81; and b with t2
    read at each band of the t2 rule (rules.T2_TOLS)."""
    sizes, b_true = (250, 500, 1000, 2000), 0.81
    for noise in NOISES:
        hits, estimates, by_tol = [], [], {tol: [] for tol in T2_TOLS}
        for r in range(replicates):
            n_all, found = [], []
            for n, k in itertools.product(sizes, range(3)):
                t2 = 4000 * (n / 1000) ** b_true
                ds = simulate(n_individuals=n, n_heldout=20, n_steps=int(4 * t2) + 800, t1=200, t2=t2, t3=2.6 * t2,
                              noise=noise, noise_ar=0.5, n_evals=60, seed=SEED0 + 100 * r + 10 * sizes.index(n) + k,
                              seed_spread=SPREAD)
                n_all.append(n)
                found.append(phasefit.detect(ds, n_boot=0, per_fact=False))
            fit = fit_scaling(n_all, [p.t2 for p in found], by_t2_tol=[p.t2_by_t2_tol for p in found])
            hits.append(covers(None if fit is None else fit.b_ci, b_true))
            estimates.append(np.nan if fit is None else fit.b)
            for entry in [] if fit is None else fit.b_by_t2_tol:
                by_tol[entry["t2_tol"]].append(entry["b"])
        config = {"noise": noise, "sizes": list(sizes), "seeds": 3, "replicates": replicates}
        rows.append(("coverage_b", float(np.mean(hits)), "share", config))
        rows.append(("median_b", float(np.nanmedian(estimates)), "", config))
        for tol, bs in by_tol.items():
            rows.append(("median_b_at_t2_tol", float(np.median(bs)) if bs else float("nan"), "", dict(config, t2_tol=tol)))
        print(f"  scaling: noise {noise:.0%} done", file=sys.stderr, flush=True)


# Valleys of the condition's plateau length in alpha (phasefit.simulate's alpha_valley:
# alpha0, k_below, k_above[, power]; log plateau = log 1500 + k |alpha - alpha0|^power).
VALLEYS = {"asymmetric": (0.7, 12.0, 3.2),  # the issue's: steep below its minimum, shallow above
           "symmetric": (0.7, 6.0, 6.0),
           "flat": (0.7, 2.0, 2.0),  # a shallow floor: the minimum is poorly determined
           "kinked": (0.65, 2.5, 8.0, 1.5)}  # no parabola: a sharp floor off the grid's midpoints, steep above
ALPHA_SCENARIOS = (("asymmetric", 0.0, 2), ("asymmetric", 0.01, 2), ("asymmetric", 0.03, 2), ("asymmetric", 0.01, 1),
                   ("symmetric", 0.01, 2), ("flat", 0.01, 2), ("kinked", 0.01, 2))  # valley, step noise, seeds
ALPHAS, ALPHA_SEEDS = np.linspace(0.0, 1.4, 8), 2  # seeds per alpha at most
TUNE_SEED0 = 0  # --tune: the tuning seeds (below 100), on which the alpha fit's choices were made


def alpha_family(replicates: int, rows: list, seed0: int = SEED0) -> None:
    """The alpha of the shortest plateau (8 alphas x 1 or 2 seeds) on each valley of ALPHA_SCENARIOS."""
    per_replicate = len(ALPHAS) * ALPHA_SEEDS
    for shape, noise, seeds in ALPHA_SCENARIOS:
        truth = VALLEYS[shape][0]
        hits, bracketed, widths, estimates = [], [], [], []
        for r in range(replicates):
            a_all, plateaus = [], []
            for (i, a), k in itertools.product(enumerate(ALPHAS), range(seeds)):
                ds = simulate(n_individuals=300, n_heldout=20, n_steps=16_000, t1=320, t2=1820, t3=5460, alpha=a,
                              alpha_valley=VALLEYS[shape], noise=noise, noise_ar=0.5, n_evals=60,
                              seed=seed0 + per_replicate * r + ALPHA_SEEDS * i + k, seed_spread=SPREAD)
                a_all.append(a)
                plateaus.append(phasefit.detect(ds, n_boot=0, per_fact=False).plateau_length)
            fit = fit_alpha_optimum(a_all, plateaus)
            ci = None if fit is None else fit.alpha_ci
            hits.append(covers(ci, truth))
            bracketed.append(covers(None if fit is None else fit.alpha_bracket, truth))
            widths.append(np.nan if ci is None else ci[1] - ci[0])
            estimates.append(np.nan if fit is None or fit.alpha_min is None else fit.alpha_min)
        config = {"valley": shape, "true_alpha": truth, "noise": noise, "alphas": len(ALPHAS), "seeds": seeds,
                  "first_seed": seed0, "replicates": replicates}
        rows.append(("coverage_best_alpha", float(np.mean(hits)), "share", config))
        rows.append(("median_best_alpha", float(np.nanmedian(estimates)), "", config))
        rows.append(("median_width_best_alpha", float(np.nanmedian(widths)), "", config))
        rows.append(("coverage_alpha_bracket", float(np.mean(bracketed)), "share", config))
        print(f"  alpha: {shape} valley, noise {noise:.0%}, {seeds} seeds done", file=sys.stderr, flush=True)


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
    parser.add_argument("--tune", action="store_true",
                        help="the alpha family on the tuning seeds (0-99, at most 6 replicates) instead of 1000 and up")
    args = parser.parse_args()
    rows: list = []
    start = time.perf_counter()
    if args.tune:  # seeds below 100 hold 6 replicates of 16 runs
        alpha_family(min(args.replicates, 100 // (len(ALPHAS) * ALPHA_SEEDS)), rows, TUNE_SEED0)
    else:
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
