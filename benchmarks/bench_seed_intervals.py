"""Which interval across seeds: a t interval over the seeds' estimates or a hierarchical bootstrap.

    python benchmarks/bench_seed_intervals.py                  # held-out seeds (1000 and up), 60 replicates
    python benchmarks/bench_seed_intervals.py --seed0 0        # the seeds the choice was made on (below 100)
    python benchmarks/bench_seed_intervals.py --noise 0.01 0.03 --replicates 30

A condition is run with 5 seeds (``phasefit.simulate`` with a 10% seed-to-seed spread of t2,
shared AR(1) step noise), each measured with ``phasefit.detect``'s defaults (auto, 200
bootstrap replicates). From its first 2, 3 and 5 seeds two 95% intervals of the condition's
t2 and plateau length are built:

- t interval: ``phasefit.crossrun``'s condition summary (the mean of the seeds' estimates,
  Student's t over them);
- hierarchical bootstrap: seeds drawn with replacement, then for each drawn seed one of its
  bootstrap replicates over individuals (``Phases.replicates``), the mean over the draw; the
  percentile interval of 2000 such means.

Each covers, or not, the condition's noise-free value (the detector on the expected curve of
the condition, without the seed's shift: ``bench_coverage.noise_free``). Prints a table, then
one JSON object per measurement: {"bench", "metric", "value", "unit", "device", "config"}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import phasefit  # noqa: E402
from bench_coverage import covers, device, noise_free  # noqa: E402
from phasefit.bootstrap import percentile_interval  # noqa: E402
from phasefit.crossrun import crossrun  # noqa: E402
from phasefit.simulate import simulate  # noqa: E402

SEEDS = (2, 3, 5)
RUN = dict(n_individuals=300, n_heldout=60, n_steps=16_000, t1=320, t2=4000, t3=10_400, n_evals=60, noise_ar=0.5)
SPREAD = 0.10
QUANTITIES = ("t2", "plateau_length")


def hierarchical_interval(replicates: np.ndarray, level: float, n_boot: int, rng: np.random.Generator):
    """Percentile interval of the mean over seeds, resampling seeds, then one individual-bootstrap
    replicate of each drawn seed. ``replicates``: (seed, replicate), NaN where a boundary is missing."""
    n, m = replicates.shape
    draws = replicates[rng.integers(0, n, (n_boot, n)), rng.integers(0, m, (n_boot, n))]
    with np.errstate(invalid="ignore"):
        return percentile_interval(np.nanmean(draws, axis=1), level)


def measure(noise: float, replicates: int, seed0: int, rows: list) -> None:
    scenario = dict(RUN, noise=noise)
    condition = noise_free(simulate(**scenario, seed=seed0))
    rng = np.random.default_rng(seed0)
    hits = {(m, n, q): [] for m in ("t", "hierarchical") for n in SEEDS for q in QUANTITIES}
    widths = {key: [] for key in hits}
    for r in range(replicates):
        found = [phasefit.detect(simulate(**scenario, seed=seed0 + 1 + max(SEEDS) * r + k, seed_spread=SPREAD), per_fact=False)
                 for k in range(max(SEEDS))]
        for n in SEEDS:
            table = crossrun(found[:n]).conditions.iloc[0]
            for q in QUANTITIES:
                truth = getattr(condition, q)
                reps = np.stack([_replicates(p, q) for p in found[:n]])
                for method, ci in (("t", [table[f"{q}_lo"], table[f"{q}_hi"]]),
                                   ("hierarchical", hierarchical_interval(reps, 0.95, 2000, rng))):
                    ok = ci is not None and np.isfinite(np.asarray(ci, dtype=float)).all()
                    hits[method, n, q].append(covers(ci if ok else None, truth))
                    widths[method, n, q].append((ci[1] - ci[0]) / truth if ok else np.nan)
        print(f"  noise {noise:.0%}: replicate {r + 1} of {replicates}", file=sys.stderr, flush=True)
    for (method, n, q), share in hits.items():
        config = {"noise": noise, "noise_ar": 0.5, "seed_spread": SPREAD, "seeds": n, "interval": method,
                  "seed0": seed0, "replicates": replicates}
        rows.append((f"coverage_{q}", float(np.mean(share)), "share", config))
        rows.append((f"median_width_{q}", float(np.nanmedian(widths[method, n, q])), "share of truth", config))


def _replicates(p: phasefit.Phases, quantity: str) -> np.ndarray:
    reps = p.replicates
    if quantity == "plateau_length":
        return (reps.sel(boundary="t2") - reps.sel(boundary="t1")).values
    return reps.sel(boundary=quantity).values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=60, help="Monte Carlo replicates (default 60)")
    parser.add_argument("--seed0", type=int, default=1000, help="first seed (default 1000: held out from tuning)")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.01], help="step noise (default 0.01)")
    args = parser.parse_args()
    rows: list = []
    start = time.perf_counter()
    for noise in args.noise:
        measure(noise, args.replicates, args.seed0, rows)
    where = device()
    print(f"intervals across seeds on {where}, {time.perf_counter() - start:.0f} s, {args.replicates} replicates "
          "(nominal 95%; coverage: share covering the condition's value; width: median, as a share of it)")
    print(f"{'step noise':<11}{'quantity':<16}{'interval':<14}" + "".join(f"{f'{n} seeds':>18}" for n in SEEDS))
    print(f"{'':<41}" + f"{'coverage, width':>18}" * len(SEEDS))
    cells = {}
    for metric, value, unit, config in rows:
        what, quantity = metric.split("_", 1)
        cells.setdefault((config["noise"], quantity.removeprefix("width_"), config["interval"]), {}) \
            .setdefault(config["seeds"], {})[what] = value
    for (noise, quantity, method), by_n in cells.items():
        shown = [f"{by_n[n]['coverage']:.2f}, {by_n[n]['median']:.2f}" for n in SEEDS]
        print(f"{noise:<11.0%}{quantity:<16}{method:<14}" + "".join(f"{c:>18}" for c in shown))
    for metric, value, unit, config in rows:
        print(json.dumps({"bench": "seed_intervals", "metric": metric, "value": value, "unit": unit, "device": where,
                          "config": config}))


if __name__ == "__main__":
    main()
