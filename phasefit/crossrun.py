"""Statistics across runs (statsmodels): scaling with N, the best alpha, condition effects.

- ``fit_scaling``: plateau end ~ a * N^b by OLS of log t2 on log N, with the interval on b
  and R^2 (the study reports 0.43 * N^0.81, R^2 = 0.998).
- ``fit_alpha_optimum``: log plateau length ~ c0 + k (alpha - alpha_min)^2, with its own k on
  each side of alpha_min, by least squares on the 5 alphas around the shortest measured
  plateau; alpha_min with a parametric bootstrap interval from the seeds' noise, beside the
  swept alpha of the shortest plateau and its neighbours.
- ``compare_conditions``: differences of a quantity between conditions (e.g. warm-up minus
  uniform) with intervals: Welch's t interval across seeds when both sides have two runs or
  more; otherwise (method "one seed") a normal interval from the runs' within-run intervals,
  with a note that it cannot separate the conditions from seed-to-seed noise.
- ``seed_summary``: runs that differ only by seed: mean and t interval of each quantity.
- ``condition_summary`` (``phasefit.conditions``): the headline, one row per condition.
- ``crossrun``: all of the above from a list of ``Phases`` (or their dicts), as the runs allow.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from logstore.schema import flatten_config as flatten
from phasefit.bootstrap import seed_interval
from phasefit.conditions import HEADLINE as QUANTITIES, INTERVENTION, condition_summary, format_conditions, has_seeds
from phasefit.conditions import measured, num as _num, seed_kind
from phasefit.runs import condition_label, conditions

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
    n_center: float | None = None  # the geometric mean of the N fitted
    value_at_center: float | None = None  # a * n_center^b: the fit's level where it is best known
    value_at_center_ci: list | None = None
    notes: list = field(default_factory=list)  # runs left out of the fit, and why
    b_by_t2_tol: list = field(default_factory=list)  # {"t2_tol", "b", "b_ci", "n_runs"}: b with t2 read at that band
    ci_kind: str = "runs: OLS t interval, each run's value one observation (seeds included), nothing resampled"

    def predict(self, n_individuals):
        return self.a * np.asarray(n_individuals, dtype=float) ** self.b


@dataclass
class AlphaOptimum:
    """The alpha that minimises a quantity (the plateau length): a valley in log(value) with a
    wall of its own steepness on each side, fitted near the shortest measured plateau, with a
    bootstrap interval over the seeds' noise."""

    quantity: str
    alpha_min: float | None
    alpha_ci: list | None
    value_at_min: float | None
    coef: list  # c0, k_below, k_above, m: log(value) = c0 + k (alpha - m)^2 over ``window`` (k_below below m)
    r2: float
    n_runs: int
    alphas: list
    group: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    window: list = field(default_factory=list)  # the alphas the valley was fitted on
    alpha_grid_min: float | None = None  # the swept alpha with the shortest mean (no model)
    alpha_bracket: list | None = None  # its neighbours on the grid: where the minimum lies
    ci_kind: str = ""  # what the interval resamples

    def predict(self, alpha):
        """The fitted valley (the quantity's units), meant for the alphas of ``window``."""
        c0, k_below, k_above, floor = self.coef
        d = np.asarray(alpha, dtype=float) - floor
        return np.exp(c0 + np.where(d < 0, k_below, k_above) * d**2)


def fit_scaling(n_individuals, values, level: float = 0.95, quantity: str = "t2", group: dict | None = None,
                runs=None, by_t2_tol=None) -> ScalingFit | None:
    """OLS of log(value) on log(N); None with fewer than 3 positive values or 2 distinct N.

    Estimand: b, the slope of log(value) against log(N) across the condition's population
    sizes. log N is centred on its mean, so the fit's level is also reported where it is best
    known: ``value_at_center`` at the geometric mean of the N (its interval is not entangled
    with b's, as a's at N = 1 is). Runs whose value is missing (no plateau end: censored at the
    run's length) are left out and named in ``notes`` (``runs``: their names). ``by_t2_tol``
    (each run's ``Phases.t2_by_t2_tol``: t2 read by the threshold rules at each band of
    T2_TOLS) repeats a t2 or plateau-length fit at each band (``b_by_t2_tol``); a note says
    when some run has none (a phases.json written before they were recorded).
    """
    import statsmodels.api as sm

    n = np.asarray(n_individuals, dtype=float)
    y = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    ok = np.isfinite(n) & np.isfinite(y) & (n > 0) & (y > 0)
    if ok.sum() < 3 or len(np.unique(n[ok])) < 2:
        return None
    center = float(np.log(n[ok]).mean())
    model = sm.OLS(np.log(y[ok]), sm.add_constant(np.log(n[ok]) - center)).fit()
    ci = model.conf_int(alpha=1 - level)
    b, level_at_center = float(model.params[1]), float(model.params[0])
    a_ci = np.exp(model.get_prediction(np.array([[1.0, -center]])).conf_int(alpha=1 - level)[0])
    fit = ScalingFit(quantity, float(np.exp(level_at_center - b * center)), b, [float(ci[1, 0]), float(ci[1, 1])],
                     [float(a_ci[0]), float(a_ci[1])], float(model.rsquared), int(ok.sum()),
                     sorted(set(n[ok].astype(int).tolist())), group or {}, float(np.exp(center)),
                     float(np.exp(level_at_center)), [float(np.exp(ci[0, 0])), float(np.exp(ci[0, 1]))])
    missing = np.isfinite(n) & ~np.isfinite(y)
    if missing.any():
        names = [str(r) for r, m in zip(runs, missing) if m] if runs is not None else []
        fit.notes.append(f"{int(missing.sum())} runs without a {quantity} (no plateau end by the end of the run: "
                         f"censored) are left out" + (f": {', '.join(names)}" if names else "")
                         + "; the fit is biased toward shorter plateaus at the N they were at")
    if by_t2_tol is not None and quantity in ("t2", "plateau_length"):
        by_t2_tol = list(by_t2_tol)
        if all(by_t2_tol):
            fit.b_by_t2_tol = _across_t2_tol(n, by_t2_tol, quantity, level)
        else:
            fit.notes.append("b across the t2 rule's band needs every run's t2_by_t2_tol (run phasefit detect again)")
    return fit


def _across_t2_tol(n: np.ndarray, by_t2_tol: list, quantity: str, level: float) -> list:
    """b refitted with t2 (and the plateau length) read at each band of the t2 rule."""
    out = []
    for k, tol in enumerate(row["t2_tol"] for row in by_t2_tol[0]):
        fit = fit_scaling(n, [run[k][quantity] for run in by_t2_tol], level, quantity)
        if fit is not None:
            out.append({"t2_tol": tol, "b": fit.b, "b_ci": fit.b_ci, "n_runs": fit.n_runs})
    return out


ALPHA_WINDOW = 2  # grid steps each side of the shortest plateau: the valley fitted on 5 alphas (docs/phasefit.md)
PROFILE_POINTS = 401  # candidate minima across the window: 0.002 apart on a sweep 0.2 apart


def fit_alpha_optimum(alpha, values, level: float = 0.95, quantity: str = "plateau_length", n_boot: int = 2000,
                      seed: int = 0, group: dict | None = None, window: int = ALPHA_WINDOW) -> AlphaOptimum | None:
    """The alpha minimising ``values`` (one per run; several runs per alpha are seeds).

    Estimand: the alpha at which the condition's (geometric-mean) value is smallest. A valley
    with a wall of its own steepness on each side, log(value) = c0 + k (alpha - alpha_min)^2
    (k_below below alpha_min, k_above above), is fitted by least squares on the 2 ``window`` + 1
    swept alphas centred on the one with the shortest geometric-mean value: near the floor, so
    the walls far from it do not bend the fit, and with two curvatures, so that an asymmetric
    valley does not pull the minimum toward its shallower wall (as one parabola does). The
    interval is a parametric percentile bootstrap: each alpha's mean log(value) is redrawn
    around its measured value with the variance of the fit's residuals (the runs of the window:
    seed-to-seed noise and any misfit of the valley's shape; the variance's own uncertainty
    drawn from its chi-square law), the window chosen again and the valley refitted in every
    replicate. ``alpha_grid_min`` and ``alpha_bracket``
    need no model: the swept alpha with the shortest geometric mean and its neighbours. None
    with fewer than 4 runs or 3 distinct alphas; no ``alpha_min`` with fewer than 2 ``window``
    + 1 alphas.
    """
    a = np.asarray(alpha, dtype=float)
    y = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    ok = np.isfinite(a) & np.isfinite(y) & (y > 0)
    a, log_y = a[ok], np.log(y[ok])
    grid, where, counts = np.unique(a, return_inverse=True, return_counts=True)
    if len(a) < 4 or len(grid) < 3:
        return None
    means = np.bincount(where, log_y) / counts
    i = int(np.argmin(means))
    result = AlphaOptimum(quantity, None, None, None, [], float("nan"), len(a), grid.tolist(), group or {},
                          alpha_grid_min=float(grid[i]),
                          alpha_bracket=[float(grid[max(i - 1, 0)]), float(grid[min(i + 1, len(grid) - 1)])])
    width = 2 * window + 1
    if len(grid) < width:
        result.notes.append(f"only {len(grid)} alphas swept: the valley needs {width}, so its minimum is only "
                            "bracketed")
        return result
    start = _window_start(i, len(grid), window)
    inside = slice(start, start + width)
    found, coef = _valley_fit(grid[inside], means[None, inside], counts[inside])
    result.window, result.coef = grid[inside].tolist(), coef[0].tolist()
    chosen = (where >= start) & (where < start + width)
    residual = log_y[chosen] - np.log(result.predict(a[chosen]))
    result.r2 = float(1 - residual @ residual / np.sum((log_y[chosen] - log_y[chosen].mean()) ** 2))
    if i in (0, len(grid) - 1):
        result.notes.append(f"no minimum inside the alphas swept: the shortest {quantity} is at alpha = {grid[i]:g}, "
                            "an end of the sweep")
        return result
    if not np.isfinite(found[0]):
        result.notes.append("no interior minimum: the valley fitted near the shortest plateau has its floor at an "
                            "end of its window")
        return result
    result.alpha_min, result.value_at_min = float(found[0]), float(np.exp(coef[0, 0]))
    spread, df, result.ci_kind = _residual_spread(residual, bool(np.all(counts == 1)))
    if df < 1:
        result.notes.append("no interval: the valley's fit has no residual to measure the noise by (more seeds)")
        return result
    minima = _alpha_replicates(grid, means, counts, window, spread, df, n_boot, seed)
    defined = np.isfinite(minima)
    if defined.mean() >= 0.5:
        lo, hi = np.quantile(minima[defined], [(1 - level) / 2, (1 + level) / 2])
        result.alpha_ci = [float(lo), float(hi)]
    if defined.mean() < 1 - (1 - level) / 2:
        result.notes.append(f"{1 - defined.mean():.0%} of bootstrap replicates have no interior minimum: "
                            "the interval is unreliable")
    if not result.alpha_bracket[0] <= result.alpha_min <= result.alpha_bracket[1]:
        result.notes.append(f"the valley's minimum ({result.alpha_min:.2f}) lies outside the grid's bracket "
                            f"[{result.alpha_bracket[0]:g}, {result.alpha_bracket[1]:g}]")
    return result


def _window_start(i: int, n_grid: int, window: int) -> int:
    """First grid index of the 2 window + 1 alphas centred on index i (at an end of the sweep: its first or last)."""
    return max(min(i - window, n_grid - 2 * window - 1), 0)


def _valley_fit(x: np.ndarray, means: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares valleys c0 + k (x - m)^2, k = k_below below m and k_above above, through
    each row of ``means`` (rows x alphas ``x``, the mean log value of ``counts`` runs each).

    Linear in (c0, k_below, k_above) for a given floor m, so m is profiled over the window on
    PROFILE_POINTS candidates (both walls rising: k >= 0). Returns the minima (NaN where the
    best floor is at an end of the window or no candidate has both walls rising) and the
    coefficients (c0, k_below, k_above, m) of each row.
    """
    floors = np.linspace(x[0], x[-1], PROFILE_POINTS)
    d = x[None, :] - floors[:, None]  # (floor, alpha)
    design = np.stack([np.ones_like(d), np.minimum(d, 0) ** 2, np.maximum(d, 0) ** 2], axis=-1)
    root = np.sqrt(counts)[None, :, None]  # weighted least squares: an alpha's mean counts once per run
    solve = np.linalg.pinv(design * root) * root.transpose(0, 2, 1)  # (floor, 3, alpha)
    coef = np.einsum("fka,ra->rfk", solve, means)
    misfit = np.einsum("a,rfa->rf", counts, (means[:, None, :] - np.einsum("fak,rfk->rfa", design, coef)) ** 2)
    misfit[(coef[..., 1] < 0) | (coef[..., 2] < 0)] = np.inf
    best = np.argmin(misfit, axis=1)
    rows = np.arange(len(means))
    interior = np.isfinite(misfit[rows, best]) & (best > 0) & (best < PROFILE_POINTS - 1)
    return (np.where(interior, floors[best], np.nan),
            np.column_stack([coef[rows, best], floors[best]]))


def _residual_spread(residual: np.ndarray, one_per_alpha: bool) -> tuple[float, int, str]:
    """The noise sd of one run's log value from the valley fit's residuals (seed-to-seed noise
    and any misfit of the valley's shape), its degrees of freedom, and what the interval resamples."""
    df = len(residual) - 4  # c0, k_below, k_above and the floor
    spread = float(np.sqrt(residual @ residual / df)) if df >= 1 else float("nan")
    unit = "one run per alpha" if one_per_alpha else "seeds"
    return spread, df, (f"{unit}: each alpha's mean log value redrawn from the valley fit's residual variance "
                        f"({df} df), the window chosen and the valley fitted again")


def _alpha_replicates(grid, means, counts, window: int, spread: float, df: int, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap minima (NaN where a replicate has none inside the sweep)."""
    rng = np.random.default_rng(seed)
    sd = spread * np.sqrt(df / rng.chisquare(df, size=(n_boot, 1)))  # the variance's own uncertainty
    drawn = means + sd * rng.standard_normal((n_boot, len(grid))) / np.sqrt(counts)
    lowest = np.argmin(drawn, axis=1)
    out = np.full(n_boot, np.nan)
    for i in np.unique(lowest):
        if 0 < i < len(grid) - 1:  # a replicate whose shortest plateau is at an end has no minimum inside
            rows, start = lowest == i, _window_start(int(i), len(grid), window)
            inside = slice(start, start + 2 * window + 1)
            out[rows] = _valley_fit(grid[inside], drawn[rows][:, inside], counts[inside])[0]
    return out


def run_frame(phases) -> pd.DataFrame:
    """One row per run (``Phases`` or their dicts): its flat config, conditions, condition
    label, seed group, each headline and intervention quantity with its interval."""
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
        named = d.get("conditions") or conditions(config)
        label = d.get("condition_label") or condition_label(named)
        row = {"run": d.get("run"), "status": d.get("status"), "config": flat, "kind": kind,
               "condition": label, "conditions": named, "match": _key(flat, sampling), "group": _key(flat),
               "N": flat.get("world.n_individuals"), "alpha": flat.get("sampling.alpha"), "seed": flat.get("seed"),
               "ci_kind": d.get("ci_kind"),
               "t2_by_t2_tol": d.get("t2_by_t2_tol") or None}
        for q in QUANTITIES:
            row[q] = d.get(q)
            ci = d.get(CI_FIELD.get(q, f"{q}_ci"))
            row[f"{q}_lo"], row[f"{q}_hi"] = ci if ci else (None, None)
        for q, (section, key) in INTERVENTION.items():
            if d.get(section):
                row[q] = d[section].get(key)
                row[f"{q}_lo"], row[f"{q}_hi"] = d[section].get(f"{key}_ci") or (None, None)
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
    for _, group in frame.groupby("group", sort=False):
        if len(group) < 2:
            continue
        for q in measured(frame):
            found = seed_interval(group[q].tolist(), level)
            if found:
                n = int(group[q].notna().sum())
                rows.append({"runs": ",".join(map(str, group["run"])), "n_seeds": n,
                             "quantity": q, "mean": found[0], "low": found[1], "high": found[2],
                             "sd": float(np.nanstd(group[q].astype(float), ddof=1)), "ci_kind": seed_kind(n)})
    return pd.DataFrame(rows)


def compare_conditions(frame: pd.DataFrame, by: str, quantity: str, reference, level: float = 0.95,
                       within: tuple[str, ...] = ()) -> pd.DataFrame:
    """Difference of ``quantity`` between each value of column ``by`` and ``reference``.

    ``within``: columns that must match (e.g. ("N",) to compare at equal population size).
    Welch t interval when both sides have >= 2 runs (seeds), else (method "one seed") a normal
    interval from the two sides' within-run intervals (their half-widths / z as standard
    errors), whose ``note`` says that it cannot separate the conditions from seed-to-seed
    noise. ``ci_kind`` says what each interval resamples.
    """
    from scipy import stats

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
                lo, hi = welch_interval(x, y, level)
                method, note = "welch", None
                kind = f"seeds: Welch t interval over {len(x)} and {len(y)} seeds' estimates"
            else:
                se = [_se_from_ci(g, quantity, z) for g in (cond, ref)]
                if any(s is None for s in se):
                    lo = hi = None
                else:
                    half = z * float(np.sqrt(se[0] ** 2 + se[1] ** 2))
                    lo, hi = diff - half, diff + half
                method, note, kind = "one seed", ONE_SEED_NOTE, ONE_SEED_KIND
            row = {"quantity": quantity, by: other, "reference": reference, "difference": diff,
                   "low": None if lo is None else float(lo), "high": None if hi is None else float(hi),
                   "n": len(x), "n_reference": len(y), "method": method, "ci_kind": kind, "note": note}
            row.update(dict(zip(within, match if isinstance(match, tuple) else (match,))))
            rows.append(row)
    return pd.DataFrame(rows)


def welch_interval(x, y, level: float = 0.95) -> tuple[float, float]:
    """Welch's t interval of mean(x) - mean(y) (two runs or more on each side)."""
    from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

    lo, hi = CompareMeans(DescrStatsW(np.asarray(x, float)), DescrStatsW(np.asarray(y, float))).tconfint_diff(
        alpha=1 - level, usevar="unequal")
    return float(lo), float(hi)


ONE_SEED_KIND = "one seed: the runs' within-run intervals combined (not seed-to-seed spread)"
ONE_SEED_NOTE = ("one seed on a side: the interval holds each run's own noise only, so it cannot separate the "
                 "conditions from seed-to-seed noise (run two seeds or more of each)")


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
    seeds: pd.DataFrame = field(default_factory=pd.DataFrame)  # across-seed intervals, one row per quantity
    conditions: pd.DataFrame = field(default_factory=pd.DataFrame)  # the headline: one row per condition
    notes: list = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.scaling or self.alpha or len(self.differences) or len(self.seeds) or self.notes)

    def to_dict(self) -> dict:
        def records(df):
            return json.loads(df.to_json(orient="records")) if len(df) else []

        return {"scaling": [asdict(s) for s in self.scaling], "alpha": [asdict(a) for a in self.alpha],
                "differences": records(self.differences), "seeds": records(self.seeds),
                "conditions": records(self.conditions), "notes": self.notes}

    def has_seeds(self) -> bool:
        """Whether some condition has two seeds or more (its intervals are then across seeds)."""
        return has_seeds(self.conditions)

    def format_conditions(self) -> str:
        """The table of conditions for the terminal (``phasefit.conditions.format_conditions``)."""
        return format_conditions(self.conditions)

    def format(self) -> str:
        """Plain-text summary of the fits and differences for the terminal (the conditions'
        intervals across seeds: ``format_conditions``)."""
        lines = []
        for s in self.scaling:
            at = "" if s.value_at_center is None else (f", {s.value_at_center:.0f} [{s.value_at_center_ci[0]:.0f}, "
                                                       f"{s.value_at_center_ci[1]:.0f}] at N = {s.n_center:.0f}")
            lines.append(f"{s.quantity} ~ {s.a:.3g} * N^{s.b:.3f}  (b 95% CI [{s.b_ci[0]:.3f}, {s.b_ci[1]:.3f}]{at}, "
                         f"R^2 = {s.r2:.3f}, {s.n_runs} runs, N = {', '.join(map(str, s.n_values))})"
                         + (f"  [{_show_group(s.group)}]" if s.group else "") + "".join(f"; {n}" for n in s.notes)
                         + ("; b at t2_tol " + ", ".join(f"{t['t2_tol']:g}: {t['b']:.3f}" for t in s.b_by_t2_tol)
                            if s.b_by_t2_tol else ""))
        for a in self.alpha:
            where = "none" if a.alpha_min is None else f"{a.alpha_min:.2f}"
            ci = "" if a.alpha_ci is None else f" (CI [{a.alpha_ci[0]:.2f}, {a.alpha_ci[1]:.2f}])"
            grid = "" if a.alpha_grid_min is None else f"; shortest measured at alpha = {a.alpha_grid_min:g}"
            fitted = (f", valley R^2 = {a.r2:.3f} over alphas {a.window[0]:g}..{a.window[-1]:g}" if a.window
                      else "")
            lines.append(f"alpha minimising the {a.quantity}: {where}{ci}{fitted} of {a.n_runs} runs{grid}"
                         + (f" (interval: {a.ci_kind})" if a.alpha_ci else "")
                         + (f"  [{_show_group(a.group)}]" if a.group else "")
                         + "".join(f"; {n}" for n in a.notes))
        for _, r in self.differences.iterrows():
            ci = "" if r["low"] is None or pd.isna(r["low"]) else f" [{_num(r['low'])}, {_num(r['high'])}]"
            lines.append(f"{r['quantity']}: {r['condition']} - {r['reference']} = {_num(r['difference'])}{ci} "
                         f"({r['method']}, N={r.get('N', '?')})")
        notes = {r["note"] for _, r in self.differences.iterrows() if isinstance(r.get("note"), str)}
        lines.extend(f"differences marked 'one seed': {n}" for n in sorted(notes))
        lines.extend(self.notes)
        return "\n".join(lines)


def _show_group(group: dict) -> str:
    return " ".join(f"{k.split('.')[-1]}={v}" for k, v in group.items())


def crossrun(phases, level: float = 0.95) -> CrossRun:
    """Every cross-run statistic the set of runs supports (see the module docstring)."""
    frame = run_frame(phases)
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
                fit = fit_scaling(group["N"], group[quantity], level, quantity, fixed, runs=group["run"],
                                  by_t2_tol=group["t2_by_t2_tol"])
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
    out.conditions = condition_summary(frame, level)
    return out
