"""The segmented fit's number of knots, chosen on principle: variants on simulated curves.

    python benchmarks/bench_fit.py                # the variants, tuning seeds 0-4 of every scenario
    python benchmarks/bench_fit.py --seeds 1000   # the same on held-out seeds (1000 and up)
    python benchmarks/bench_fit.py --davies       # Davies' test on curves with and without a plateau end
    python benchmarks/bench_fit.py --timing STORE # phasefit.detect(store, method="fit", n_boot=200), 3 times

Curves: ``phasefit.simulate`` with 300 individuals, a 16k-step run, shared step noise 1% or 3%
(AR(1), correlation 0.5), plateau drift 0 or 4%, the three boundary sets of docs/phasefit.md
and 20, 60 or 200 evaluations. Every variant fits the same x = log(1 + step) and loss from the
same start (``SegmentedFitDetector.fit_range``) and reads t1, t2, t3 off its fitted line with
the same rules (``SegmentedFitDetector.read_line``):

- hand / bic: the greedy knot path, K by the plain BIC (the fit before this benchmark);
- hand / long-run xP: the same path, K by ``choose_count``'s long-run criterion with P times
  its 4 log n per knot;
- muggeo / bic and muggeo / long-run: ``piecewise_regression.Fit`` (Muggeo's iterative method,
  random starts and 10 bootstrap restarts) for K = 1..5, K chosen by the package's BIC (what
  its ``ModelSelection`` prints) or by the long-run criterion on its residuals.

Per variant, noise and grid: the knots chosen (min-max; the curves have 3 true corners), the
share of curves at the most knots allowed, the worst and median error of t1, t2, t3 in % of the
run, the share of failures (a boundary missing, or no converged fit) and the median ms per fit.
Prints a table, then one JSON object per measurement.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_coverage import device  # noqa: E402  (benchmarks/bench_coverage.py)
from phasefit.detectors import SegmentedFitDetector  # noqa: E402
from phasefit.detectors.fit import choose_count, davies_p, plateau_start  # noqa: E402
from phasefit.simulate import simulate, truth  # noqa: E402
from phasefit.summary import population_curves, split_curve  # noqa: E402

NOISES, DRIFTS, GRIDS = (0.01, 0.03), (0.0, 0.04), (20, 60, 200)
CORNERS = [(320, 4000, 10400), (200, 1500, 5000), (500, 8000, 14000)]
RUN = dict(n_individuals=300, n_heldout=10, n_steps=16_000, noise_ar=0.5)
MAX_KNOTS = 5
MUGGEO_RESTARTS = 10


def curve_of(**kw):
    ds = simulate(**RUN, **kw)
    return split_curve(ds, population_curves(ds)), truth(ds)


def hand(penalty=None):
    """The detector's own knot path; K by BIC (penalty None) or the long-run criterion."""
    def run(curve):
        kind = {"criterion": "bic"} if penalty is None else {"penalty": penalty}
        d = SegmentedFitDetector(**kind).fit(curve)
        return d.boundaries_, d.diagnostics_.get("n_knots"), d.diagnostics_.get("converged", False)
    return run


def muggeo_fits(curve):
    """piecewise_regression fits for K = 1..MAX_KNOTS on the detector's fitted range."""
    import piecewise_regression as pw  # its import pulls in matplotlib.pyplot

    detector = SegmentedFitDetector()
    start = detector.fit_range(curve)
    x, y = curve.log_step[start:], curve.loss[start:]
    fits = []
    for k in range(1, min(MAX_KNOTS, (len(y) - 2) // 3) + 1):
        fit = pw.Fit(x, y, n_breakpoints=k, n_boot=MUGGEO_RESTARTS)
        fits.append(fit if fit.best_muggeo else None)
    return detector, curve, x, y, fits


def muggeo_choice(detector, curve, x, y, fits, criterion):
    converged = [k for k, f in enumerate(fits) if f is not None]
    if not converged:
        return None, None, False
    if criterion == "bic":
        k = min(converged, key=lambda k: fits[k].get_results()["bic"])
    else:  # the long-run criterion over the converged counts (the largest converged sets the variance)
        residuals = [y - fits[j].predict(x) for j in converged]
        k = choose_count(residuals, [j + 1 for j in converged])[0] - 1
    best = fits[k].best_muggeo.best_fit
    params, knots = best.raw_params, np.asarray(best.next_breakpoints)
    line = {"coef": np.asarray(params[:2 + len(knots)]), "knots": knots, "width": 0.0}
    return detector.read_line(line, x[0], x[-1], curve), k + 1, True


def variants_family(seed0: int, n_seeds: int, rows: list, muggeo: bool) -> None:
    hands = {"hand / bic": hand(None), **{f"hand / long-run x{p:g}": hand(p) for p in (0.75, 1.0, 1.25)}}
    names = list(hands) + (["muggeo / bic", "muggeo / long-run"] if muggeo else [])
    for noise, n_evals in itertools.product(NOISES, GRIDS):
        record = {name: {"knots": [], "errors": [], "failed": [], "ms": []} for name in names}
        for drift, corners, i in itertools.product(DRIFTS, CORNERS, range(n_seeds)):
            t1, t2, t3 = corners
            curve, true = curve_of(t1=t1, t2=t2, t3=t3, noise=noise, drift=drift, n_evals=n_evals, seed=seed0 + i)
            results = {}
            for name, run in hands.items():
                start = time.perf_counter()
                results[name] = run(curve) + ((time.perf_counter() - start) * 1e3,)
            if muggeo:
                np.random.seed(seed0 + i)  # the package draws its starts and restarts from numpy's global state
                start = time.perf_counter()
                fitted = muggeo_fits(curve)
                ms = (time.perf_counter() - start) * 1e3
                for criterion in ("bic", "long-run"):
                    results[f"muggeo / {criterion}"] = muggeo_choice(*fitted, criterion) + (ms,)
            for name, (found, n_knots, converged, ms) in results.items():
                r = record[name]
                r["ms"].append(ms)
                values = [None if found is None else getattr(found, k) for k in ("t1", "t2", "t3")]
                failed = not converged or any(v is None for v in values)
                r["failed"].append(failed)
                if n_knots is not None:
                    r["knots"].append(n_knots)
                if not failed:
                    r["errors"].append(max(abs(v - true[k]) for v, k in zip(values, ("t1", "t2", "t3"))) / 16_000)
        config = {"noise": noise, "n_evals": n_evals, "drifts": list(DRIFTS), "seeds": [seed0, seed0 + n_seeds - 1],
                  "curves": len(DRIFTS) * len(CORNERS) * n_seeds}
        for name in names:
            r = record[name]
            knots = r["knots"] or [0]
            out = {"knots_min": min(knots), "knots_max": max(knots),
                   "share_at_max_knots": float(np.mean(np.array(knots) == MAX_KNOTS)),
                   "worst_error": 100 * max(r["errors"], default=np.nan),
                   "median_error": 100 * float(np.median(r["errors"])) if r["errors"] else np.nan,
                   "failure_rate": float(np.mean(r["failed"])), "ms_per_fit": float(np.median(r["ms"]))}
            for metric, value in out.items():
                unit = {"worst_error": "% of run", "median_error": "% of run", "ms_per_fit": "ms"}.get(metric, "")
                rows.append((name, metric, value, unit, config))
        print(f"  noise {noise:.0%}, {n_evals} evaluations done", file=sys.stderr, flush=True)


def davies_family(seed0: int, n_seeds: int, rows: list) -> None:
    """Share of curves on which Davies' test rejects (p < 0.01, 0.05): with a plateau end (the
    three boundary sets) and without one (final_accuracy 0, or t2 past the run's end), with the
    long-run correction (the detector's ``davies_p``) and without (rho = 0, as
    ``piecewise_regression.davies`` assumes)."""
    kinds = {"plateau end": [dict(t1=a, t2=b, t3=c) for a, b, c in CORNERS],
             "no end: final_accuracy 0": [dict(t1=a, t2=b, t3=c, final_accuracy=0.0) for a, b, c in CORNERS],
             "no end: t2 after the run": [dict(t1=a, t2=40_000, t3=100_000) for a, _, _ in CORNERS]}
    for noise, n_evals, (kind, scenarios) in itertools.product(NOISES, GRIDS, kinds.items()):
        corrected, plain, missing = [], [], 0
        for drift, scenario, i in itertools.product(DRIFTS, scenarios, range(n_seeds)):
            if kind == "no end: final_accuracy 0" and drift:  # the drift stops at t2: a bend, not an end
                continue
            curve, _ = curve_of(**scenario, noise=noise, drift=drift, n_evals=n_evals, seed=seed0 + i)
            fitted = SegmentedFitDetector().fit(curve)
            if fitted.diagnostics_.get("davies_p") is None:
                missing += 1
                continue
            corrected.append(fitted.diagnostics_["davies_p"])
            after = curve.log_step >= plateau_start(fitted.t1_, np.log1p(fitted.knots_))
            plain.append(davies_p(curve.log_step[after], curve.loss[after], 0.0))
        config = {"noise": noise, "n_evals": n_evals, "curves": kind, "n": len(corrected), "untested": missing,
                  "seeds": [seed0, seed0 + n_seeds - 1]}
        for label, ps in (("long-run", corrected), ("independent", plain)):
            for level in (0.01, 0.05):
                rows.append((f"davies {label}", f"rejects_at_{level:g}", float(np.mean(np.array(ps) < level)),
                             "share", config))
        print(f"  davies: noise {noise:.0%}, {n_evals} evaluations, {kind} done", file=sys.stderr, flush=True)


def timing(store: str, rows: list) -> None:
    import logstore
    import phasefit

    for repeat in range(3):
        start = time.perf_counter()
        phasefit.detect(logstore.open_run(store), method="fit", n_boot=200)
        rows.append(("detect fit", "seconds", time.perf_counter() - start, "s", {"store": store, "n_boot": 200,
                                                                                "repeat": repeat}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=0, help="first seed (default 0: tuning; 1000+: held out)")
    parser.add_argument("--n-seeds", type=int, default=5, help="seeds per scenario (default 5)")
    parser.add_argument("--no-muggeo", action="store_true", help="leave out the piecewise_regression variants")
    parser.add_argument("--davies", action="store_true", help="Davies' test instead of the variants")
    parser.add_argument("--timing", metavar="STORE", help="time phasefit.detect(STORE, method='fit', n_boot=200)")
    args = parser.parse_args()
    rows: list = []
    start = time.perf_counter()
    if args.timing:
        timing(args.timing, rows)
    elif args.davies:
        davies_family(args.seeds, args.n_seeds, rows)
    else:
        variants_family(args.seeds, args.n_seeds, rows, not args.no_muggeo)
    where = device()
    print(f"segmented fit on {where}, {time.perf_counter() - start:.0f} s")
    table: dict = {}
    for name, metric, value, unit, config in rows:
        table.setdefault((name, json.dumps(config)), {})[metric] = value
    metrics = list(dict.fromkeys(metric for _, metric, *_ in rows))
    print(f"{'variant':<22} " + " ".join(f"{m[:18]:>18}" for m in metrics) + "  scenario")
    for (name, config), values in table.items():
        scenario = ", ".join(f"{k} {v}" for k, v in json.loads(config).items())
        print(f"{name:<22} " + " ".join(f"{values.get(m, float('nan')):>18.3g}" for m in metrics) + f"  {scenario}")
    for name, metric, value, unit, config in rows:
        print(json.dumps({"bench": "fit", "variant": name, "metric": metric, "value": value, "unit": unit,
                          "device": where, "config": config}))


if __name__ == "__main__":
    main()
