"""Statistics across runs (statsmodels): scaling with N, the best alpha, condition effects.

- ``fit_scaling``: plateau end ~ a * N^b by OLS of log t2 on log N, with the interval on b
  and R^2 (the study reports 0.43 * N^0.81, R^2 = 0.998).
- ``fit_alpha_optimum``: log plateau length ~ c0 + c1 alpha + c2 alpha^2 by OLS; the alpha of
  the minimum, -c1 / (2 c2), with an interval from draws of the coefficients (their
  estimated normal law): the fitted curve and the uncertainty of its minimum.
- ``compare_conditions``: differences of a quantity between conditions (e.g. warm-up minus
  uniform) with intervals: Welch's t interval across seeds when both sides have two runs or
  more, otherwise a normal interval from the runs' bootstrap intervals.
- ``seed_summary``: runs that differ only by seed: mean and t interval of each quantity.
- ``crossrun``: all of the above from a list of ``Phases`` (or their dicts), as the runs allow.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from logstore.runs import flatten_config as flatten
from phasefit.bootstrap import seed_interval
from phasefit.runs import condition_label, conditions

QUANTITIES = ("t1", "t2", "t3", "plateau_length", "final_accuracy", "hallucination_onset")
CI_FIELD = {"plateau_length": "plateau_ci"}
IGNORED = ("seed", "name", "train.init_from", "train.compile", "train.cuda_graphs", "train.checkpoint_every_s",
           "train.n_checkpoints", "eval.batch_size")  # keys that do not change what is measured


@dataclass
class ScalingFit:
    """value ~ a * N^b over the runs of one group (other conditions fixed)."""

    quantity: str
    a: float
    b: float
    b_ci: list
    a_ci: list
    r2: float
    n_runs: int
    n_values: list  # the N of the runs fitted
    group: dict = field(default_factory=dict)

    def predict(self, n_individuals):
        return self.a * np.asarray(n_individuals, dtype=float) ** self.b


@dataclass
class AlphaOptimum:
    """log plateau ~ quadratic in alpha; the alpha that minimises it, with its interval."""

    quantity: str
    alpha_min: float | None
    alpha_ci: list | None
    value_at_min: float | None
    coef: list  # c0, c1, c2 of log(value) = c0 + c1 alpha + c2 alpha^2
    cov: list
    r2: float
    n_runs: int
    alphas: list
    group: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def predict(self, alpha):
        alpha = np.asarray(alpha, dtype=float)
        c0, c1, c2 = self.coef
        return np.exp(c0 + c1 * alpha + c2 * alpha**2)


def fit_scaling(n_individuals, values, level: float = 0.95, quantity: str = "t2", group: dict | None = None) -> ScalingFit | None:
    """OLS of log(value) on log(N); None with fewer than 3 positive values or 2 distinct N."""
    import statsmodels.api as sm

    n = np.asarray(n_individuals, dtype=float)
    y = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    ok = np.isfinite(n) & np.isfinite(y) & (n > 0) & (y > 0)
    if ok.sum() < 3 or len(np.unique(n[ok])) < 2:
        return None
    model = sm.OLS(np.log(y[ok]), sm.add_constant(np.log(n[ok]))).fit()
    ci = model.conf_int(alpha=1 - level)
    return ScalingFit(quantity, float(np.exp(model.params[0])), float(model.params[1]),
                      [float(ci[1, 0]), float(ci[1, 1])], [float(np.exp(ci[0, 0])), float(np.exp(ci[0, 1]))],
                      float(model.rsquared), int(ok.sum()), sorted(set(n[ok].astype(int).tolist())), group or {})


def fit_alpha_optimum(alpha, values, level: float = 0.95, quantity: str = "plateau_length", n_draws: int = 4000,
                      seed: int = 0, group: dict | None = None) -> AlphaOptimum | None:
    """Quadratic fit of log(value) in alpha and the interval of its minimum; None if < 4 runs
    or < 3 distinct alphas."""
    import statsmodels.api as sm

    a = np.asarray(alpha, dtype=float)
    y = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    ok = np.isfinite(a) & np.isfinite(y) & (y > 0)
    if ok.sum() < 4 or len(np.unique(a[ok])) < 3:
        return None
    X = np.column_stack([np.ones(ok.sum()), a[ok], a[ok] ** 2])
    model = sm.OLS(np.log(y[ok]), X).fit()
    coef, cov = model.params, model.cov_params()
    result = AlphaOptimum(quantity, None, None, None, coef.tolist(), np.asarray(cov).tolist(), float(model.rsquared),
                          int(ok.sum()), sorted(set(a[ok].tolist())), group or {})
    if coef[2] <= 0:
        result.notes.append("no interior minimum: the fitted curve is not convex in alpha")
        return result
    lowest = float(-coef[1] / (2 * coef[2]))
    if not a[ok].min() <= lowest <= a[ok].max():
        edge = a[ok].min() if lowest < a[ok].min() else a[ok].max()
        result.notes.append(f"no minimum inside the alphas swept: the fitted curve is lowest at alpha = {edge:g}")
        return result
    result.alpha_min = lowest
    result.value_at_min = float(result.predict(result.alpha_min))
    draws = np.random.default_rng(seed).multivariate_normal(coef, cov, size=n_draws)
    convex = draws[:, 2] > 0
    minima = -draws[convex, 1] / (2 * draws[convex, 2])
    if convex.mean() >= 0.5:
        lo, hi = np.quantile(minima, [(1 - level) / 2, (1 + level) / 2])
        result.alpha_ci = [float(lo), float(hi)]
    if convex.mean() < 1 - (1 - level) / 2:
        result.notes.append(f"{1 - convex.mean():.0%} of coefficient draws have no minimum: the interval is unreliable")
    return result


def _frame(phases) -> pd.DataFrame:
    rows = []
    for p in phases:
        d = p.to_dict() if hasattr(p, "to_dict") else dict(p)
        config = d.get("config") or {}
        flat = flatten(config)
        kind = flat.get("sampling.kind", "uniform")
        if kind == "uniform":  # uniform sampling is the power law with alpha = 0
            flat["sampling.kind"], flat["sampling.alpha"] = "power_law", 0.0
        sampling = tuple(k for k in flat if k.startswith("sampling."))
        # The label the run's store gives (a phases.json of before it did: its conditions').
        label = d.get("condition_label") or condition_label(d.get("conditions") or conditions(config))
        row = {"run": d.get("run"), "status": d.get("status"), "config": flat, "kind": kind,
               "condition": label, "match": _key(flat, sampling),
               "N": flat.get("world.n_individuals"), "alpha": flat.get("sampling.alpha"), "seed": flat.get("seed")}
        for q in QUANTITIES:
            row[q] = d.get(q)
            ci = d.get(CI_FIELD.get(q, f"{q}_ci"))
            row[f"{q}_lo"], row[f"{q}_hi"] = ci if ci else (None, None)
        rows.append(row)
    return pd.DataFrame(rows)


def _key(flat: dict, without: tuple = ()) -> str:
    return json.dumps({k: v for k, v in sorted(flat.items()) if k not in IGNORED and k not in without})


def _varying(frame: pd.DataFrame) -> dict:
    keys = {k for c in frame["config"] for k in c} - set(IGNORED)
    return {k: sorted({json.dumps(c.get(k)) for c in frame["config"]}) for k in keys
            if len({json.dumps(c.get(k)) for c in frame["config"]}) > 1}


def _follows(frame: pd.DataFrame, driver: str, vary: dict) -> tuple[str, ...]:
    """Varying keys that are a function of ``driver`` (e.g. the steps of a sweep scaled with N)."""
    out = []
    for k in vary:
        if k == driver or k.startswith("sampling.") and driver.startswith("sampling."):
            continue
        pairs = {(json.dumps(c.get(driver)), json.dumps(c.get(k))) for c in frame["config"]}
        if len({d for d, _ in pairs}) == len(pairs):  # one value of k per value of the driver
            out.append(k)
    return tuple(out)


def seed_summary(frame: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Mean and t interval across seeds for every group of runs that differ only by seed."""
    rows = []
    for key, group in frame.groupby(frame["config"].map(_key), sort=False):
        if len(group) < 2:
            continue
        for q in QUANTITIES:
            found = seed_interval(group[q].tolist(), level)
            if found:
                rows.append({"runs": ",".join(map(str, group["run"])), "n_seeds": int(group[q].notna().sum()),
                             "quantity": q, "mean": found[0], "low": found[1], "high": found[2],
                             "sd": float(np.nanstd(group[q].astype(float), ddof=1))})
    return pd.DataFrame(rows)


def compare_conditions(frame: pd.DataFrame, by: str, quantity: str, reference, level: float = 0.95,
                       within: tuple[str, ...] = ()) -> pd.DataFrame:
    """Difference of ``quantity`` between each value of column ``by`` and ``reference``.

    ``within``: columns that must match (e.g. ("N",) to compare at equal population size).
    Welch t interval when both sides have >= 2 runs (seeds), else a normal interval from the
    two runs' bootstrap intervals (their half-widths / z as standard errors).
    """
    from scipy import stats
    from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

    z = stats.norm.ppf((1 + level) / 2)
    rows = []
    groups = frame.groupby(list(within), sort=True) if within else [((), frame)]
    for match, sub in groups:
        ref = sub[(sub[by] == reference) & sub[quantity].notna()]
        for other, cond in sub[(sub[by] != reference) & sub[quantity].notna()].groupby(by, sort=True):
            if ref.empty:
                continue
            x, y = cond[quantity].astype(float).values, ref[quantity].astype(float).values
            diff = float(x.mean() - y.mean())
            if len(x) >= 2 and len(y) >= 2:
                lo, hi = CompareMeans(DescrStatsW(x), DescrStatsW(y)).tconfint_diff(alpha=1 - level, usevar="unequal")
                method = "welch"
            else:
                se = [_se_from_ci(g, quantity, z) for g in (cond, ref)]
                if any(s is None for s in se):
                    lo = hi = None
                else:
                    half = z * float(np.sqrt(se[0] ** 2 + se[1] ** 2))
                    lo, hi = diff - half, diff + half
                method = "bootstrap"
            row = {"quantity": quantity, by: other, "reference": reference, "difference": diff,
                   "low": None if lo is None else float(lo), "high": None if hi is None else float(hi),
                   "n": len(x), "n_reference": len(y), "method": method}
            row.update(dict(zip(within, match if isinstance(match, tuple) else (match,))))
            rows.append(row)
    return pd.DataFrame(rows)


def _se_from_ci(group: pd.DataFrame, quantity: str, z: float) -> float | None:
    """Standard error of a group's mean from its runs' bootstrap intervals."""
    lo, hi = group[f"{quantity}_lo"], group[f"{quantity}_hi"]
    if lo.isna().any() or hi.isna().any():
        return None
    se = (hi.astype(float) - lo.astype(float)) / (2 * z)
    return float(np.sqrt(np.sum(se**2)) / len(group))


@dataclass
class CrossRun:
    """Cross-run statistics of a set of runs (each list empty when the runs do not allow it)."""

    scaling: list = field(default_factory=list)  # ScalingFit per group of runs varying N
    alpha: list = field(default_factory=list)  # AlphaOptimum per group of runs varying alpha
    differences: pd.DataFrame = field(default_factory=pd.DataFrame)  # conditions vs uniform
    seeds: pd.DataFrame = field(default_factory=pd.DataFrame)  # across-seed intervals
    final_accuracy: pd.DataFrame = field(default_factory=pd.DataFrame)  # per condition
    notes: list = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.scaling or self.alpha or len(self.differences) or len(self.seeds) or self.notes)

    def to_dict(self) -> dict:
        def records(df):
            return json.loads(df.to_json(orient="records")) if len(df) else []

        return {"scaling": [asdict(s) for s in self.scaling], "alpha": [asdict(a) for a in self.alpha],
                "differences": records(self.differences), "seeds": records(self.seeds),
                "final_accuracy": records(self.final_accuracy), "notes": self.notes}

    def format(self) -> str:
        """Plain-text summary for the terminal."""
        lines = []
        for s in self.scaling:
            lines.append(f"{s.quantity} ~ {s.a:.3g} * N^{s.b:.3f}  (b 95% CI [{s.b_ci[0]:.3f}, {s.b_ci[1]:.3f}], "
                         f"R^2 = {s.r2:.3f}, {s.n_runs} runs, N = {', '.join(map(str, s.n_values))})"
                         + (f"  [{_show_group(s.group)}]" if s.group else ""))
        for a in self.alpha:
            where = "none" if a.alpha_min is None else f"{a.alpha_min:.2f}"
            ci = "" if a.alpha_ci is None else f" (CI [{a.alpha_ci[0]:.2f}, {a.alpha_ci[1]:.2f}])"
            lines.append(f"alpha minimising the {a.quantity}: {where}{ci}, quadratic fit R^2 = {a.r2:.3f} over "
                         f"{a.n_runs} runs" + (f"  [{_show_group(a.group)}]" if a.group else "")
                         + "".join(f"; {n}" for n in a.notes))
        for _, r in self.differences.iterrows():
            ci = "" if r["low"] is None or pd.isna(r["low"]) else f" [{_num(r['low'])}, {_num(r['high'])}]"
            lines.append(f"{r['quantity']}: {r['condition']} - {r['reference']} = {_num(r['difference'])}{ci} "
                         f"({r['method']}, N={r.get('N', '?')})")
        for _, r in self.seeds.iterrows():
            lines.append(f"across {r['n_seeds']} seeds ({r['runs']}): {r['quantity']} = {_num(r['mean'])} "
                         f"[{_num(r['low'])}, {_num(r['high'])}]")
        lines.extend(self.notes)
        return "\n".join(lines)


def _num(value) -> str:
    """Steps as whole numbers, small quantities (accuracies, exponents) with 4 digits."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.4g}"


def _show_group(group: dict) -> str:
    return " ".join(f"{k.split('.')[-1]}={v}" for k, v in group.items())


def crossrun(phases, level: float = 0.95) -> CrossRun:
    """Every cross-run statistic the set of runs supports (see the module docstring)."""
    frame = _frame(phases)
    out = CrossRun()
    if len(frame) and (frame["status"] != "complete").any():
        left = frame.loc[frame["status"] != "complete", "run"].tolist()
        out.notes.append(f"left out of the cross-run statistics (not complete): {', '.join(map(str, left))}")
        frame = frame[frame["status"] == "complete"].reset_index(drop=True)
    if len(frame) < 2:
        return out
    vary = _varying(frame)
    out.seeds = seed_summary(frame, level)
    if "world.n_individuals" in vary:
        along = ("world.n_individuals", *_follows(frame, "world.n_individuals", vary))
        if len(along) > 1:
            out.notes.append(f"{', '.join(along[1:])} change with N; the scaling fits include their effect")
        for key, group in frame.groupby(frame["config"].map(lambda c: _key(c, along)), sort=False):
            fixed = {k: json.loads(key).get(k) for k in vary if k not in along and k in json.loads(key)}
            for quantity in ("t2", "plateau_length"):
                fit = fit_scaling(group["N"], group[quantity], level, quantity, fixed)
                if fit:
                    out.scaling.append(fit)
    if "sampling.alpha" in vary:
        along = ("sampling.alpha", *_follows(frame, "sampling.alpha", vary))
        for key, group in frame.groupby(frame["config"].map(lambda c: _key(c, along)), sort=False):
            fixed = {k: json.loads(key).get(k) for k in vary if k not in along and k in json.loads(key)}
            fit = fit_alpha_optimum(group["alpha"], group["plateau_length"], level, group=fixed)
            if fit:
                out.alpha.append(fit)
    if frame["condition"].nunique() > 1 and (frame["condition"] == "uniform").any():
        # Each sampling condition against uniform sampling, everything else equal.
        parts = [compare_conditions(frame, "condition", q, "uniform", level, within=("match",))
                 for q in ("plateau_length", "t2", "final_accuracy")]
        parts = [p for p in parts if len(p)]
        if parts:
            diff = pd.concat(parts, ignore_index=True)
            diff["N"] = diff["match"].map(lambda m: json.loads(m).get("world.n_individuals"))
            out.differences = diff.drop(columns="match")
    accuracy = []
    for key, group in frame.groupby(frame["config"].map(_key), sort=False):
        found = seed_interval(group["final_accuracy"].tolist(), level)
        first = group.iloc[0]
        row = {"runs": ",".join(map(str, group["run"])), "condition": first["condition"], "N": first["N"],
               "n_runs": len(group)}
        if found:
            row.update(mean=found[0], low=found[1], high=found[2], method="seeds")
        else:
            row.update(mean=first["final_accuracy"], low=first["final_accuracy_lo"], high=first["final_accuracy_hi"],
                       method="bootstrap")
        accuracy.append(row)
    out.final_accuracy = pd.DataFrame(accuracy)
    return out
