"""Segmented curve fits with scipy: the phases read off a broken line fitted in log-step.

On x = log(1 + step) the loss from the baseline's neighbourhood on is modelled as a
continuous broken line with K knots,

    L(x) = c0 + c1 x + sum_j c_{j+1} h(x - k_j),

with h(u) = max(u, 0) ("segmented") or the smooth hinge s log(1 + exp(u / s)) whose corner
width s is fitted too ("smooth"). The knots are the regime changes (the end of the fall, the
plateau's corners, saturation). Three choices make the fit hold on real runs as well as on
the simulator's sharp corners:

- Where: the fit starts at the last evaluation above B (1 + ``fit_band``). Before it, the
  fall from the initial loss is a sigmoid in log-step (flat for the first steps of a real
  run) whose curvature, several nats against the plateau's tenths, would take every knot.
- How many knots: K = 1 .. ``max_knots``, each added where it lowers the squared error most
  (every candidate evaluation scored at once by projection), each K's knots then refined with
  ``scipy.optimize.least_squares`` (analytic Jacobian, soft-L1 loss scaled to ``robust``
  times the estimated noise, so a few outliers cannot bend it); K is chosen with 4 log n per
  knot in units of the residuals' long-run variance (``choose_count``: the shared step noise
  is correlated, and the plain BIC took its wiggles for corners). Davies' test that the loss
  bends after the plateau's start is in the diagnostics (``davies_p``).
- Which steps: t1, t2, t3 are the threshold rules (``phasefit.rules``, the same bands as the
  threshold detector) applied to the fitted line rather than to the noisy evaluations. On a
  curve with sharp corners the rules land on the corners; on a real run's rounded, slightly
  sloping plateau a corner is ill-defined while the band crossings are not.

The fitted knots and their standard errors (from the Jacobian at the optimum) are in the
diagnostics.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import least_squares
from scipy.special import expit

from phasefit.curve import Curve, long_run_variance, row_noise
from phasefit.detectors.base import Detector
from phasefit.detectors.changepoint import LOCATION_PARAMETERS
from phasefit.rules import Boundaries, rules_on

MODELS = ("segmented", "smooth")
CRITERIA = ("long-run", "bic")
GRID = 1024  # points the fitted line is read on (uniform in log-step, knots added)


class SegmentedFitDetector(Detector):
    """Phase boundaries read off a broken line fitted on the log-step axis.

    Parameters
    ----------
    model : "segmented" (default: sharp corners) or "smooth" (rounded corners of fitted width).
    robust : scale of the soft-L1 loss in units of the estimated noise (default 3; None: plain
        least squares).
    max_knots : most knots tried (default 5: the end of the fall, the plateau's two corners,
        saturation, and one for a rounded corner).
    criterion : how the number of knots is chosen (``choose_count``): "long-run" (default: 4 log n
        per knot in units of the residuals' long-run variance) or "bic" (the plain BIC, which
        assumes independent noise; kept for comparison).
    penalty : multiplier of the long-run criterion's penalty per knot (default 1).
    counts : the numbers of knots compared (default 1 .. max_knots); bootstrap replicates
        compare the full curve's number and its two neighbours.
    fit_band : the fit starts at the last evaluation above B (1 + fit_band) before the loss
        first comes within it (default 0.25: far enough above the t1 band of 5% to place the
        fall's end, close enough that the initial fall's curvature stays out).
    t1_tol, t2_tol, t3_tol, tail : the threshold rules applied to the fitted line (defaults as
        for ``ThresholdDetector``).
    init : optional knots (steps) to start from, their number fixing K. Bootstrap replicates
        choose their own number (the uncertainty of that choice is part of their spread).
    """

    name = "fit"

    def __init__(self, model: str = "segmented", robust: float | None = 3.0, max_knots: int = 5,
                 fit_band: float = 0.25, t1_tol: float = 0.05, t2_tol: float = 0.02, t3_tol: float = 0.02,
                 tail: float = 0.05, init: tuple | None = None, criterion: str = "long-run",
                 penalty: float = 1.0, counts: tuple | None = None):
        self.model = model
        self.robust = robust
        self.max_knots = max_knots
        self.fit_band = fit_band
        self.t1_tol = t1_tol
        self.t2_tol = t2_tol
        self.t3_tol = t3_tol
        self.tail = tail
        self.init = init
        self.criterion = criterion
        self.penalty = penalty
        self.counts = counts

    def for_replicates(self) -> "SegmentedFitDetector":
        """Replicates choose their own number of knots, among this fit's and its neighbours
        (each count tried costs a refinement of its knots)."""
        params = self.get_params()
        k = getattr(self, "diagnostics_", {}).get("n_knots")
        if k is not None and self.init is None and self.criterion == "long-run":
            params["counts"] = (k - 1, k, k + 1)
        return type(self)(**params)

    def read_line(self, fit: dict, x0: float, x1: float, curve: Curve) -> Boundaries:
        """The threshold rules on the broken line ``fit`` (``fit_broken_line``'s coef, knots and
        width) over log-steps x0..x1 of ``curve``. The fitted range starts above the t1 band, so
        the rules see the whole approach to B."""
        grid = np.union1d(np.linspace(x0, x1, GRID), fit["knots"])
        line = broken_line(grid, fit["coef"], fit["knots"], fit["width"], self.model == "smooth")
        return rules_on(Curve(np.expm1(grid), line, curve.baseline, None, curve.run_length), self.t1_tol,
                        self.t2_tol, self.t3_tol, self.tail, subject="fitted loss", tail_is_missing=True)

    def fit_range(self, curve: Curve) -> int:
        """Index of the first evaluation fitted: the last above B (1 + ``fit_band``) before the
        loss first comes within it (None when it never does)."""
        near = np.flatnonzero(curve.loss <= curve.baseline * (1 + self.fit_band))
        return max(near[0] - 1, 0) if len(near) else None

    def _boundaries(self, curve: Curve) -> Boundaries:
        self.knots_ = None
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, not {self.model!r}")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, not {self.criterion!r}")
        if len(curve.loss) < 8:
            return Boundaries(None, None, None, [f"only {len(curve.loss)} evaluation steps: too few to fit"],
                              {"skipped": True})
        base = curve.baseline
        start = self.fit_range(curve)
        if start is None:
            return Boundaries(None, None, None, [f"loss never reached the baseline: lowest {curve.loss.min():.3g} "
                                                 f"nats, baseline {base:.3g} nats"])
        x, y = curve.log_step[start:], curve.loss[start:]
        # A reduced curve's cells weigh by their rows: the least squares of the rows themselves.
        w = None if curve.weight is None else curve.weight[start:]
        if len(y) < 6:
            return Boundaries(None, None, None, [f"only {len(y)} evaluations near the baseline: too few to fit"],
                              {"skipped": True})
        noise = row_noise(curve)
        f_scale = None if self.robust is None else self.robust * max(noise, 1e-6 * base)
        smooth = self.model == "smooth"
        if self.init is not None:
            knots0 = np.clip(np.log1p(np.asarray(self.init, dtype=float)), x[0], x[-1])
            fit = fit_broken_line(x, y, np.sort(knots0), smooth, f_scale, w)
            scores, rho = {len(knots0): None}, None
        else:
            fit, scores, rho = select_knots(x, y, min(self.max_knots, (len(y) - 2) // 3), smooth, f_scale, w,
                                            self.criterion, self.penalty, self.counts)
        self.knots_ = np.expm1(fit["knots"])

        found = self.read_line(fit, x[0], x[-1], curve)
        # A knot's standard error in steps, by the delta method from log-step.
        se_steps = [float(np.expm1(k) * s) if np.isfinite(s) else None for k, s in zip(fit["knots"], fit["knot_se"])]
        after = x >= plateau_start(found.t1, fit["knots"])
        p_end = davies_p(x[after], y[after], rho or 0.0) if after.sum() >= 8 else None
        found.diagnostics.update({"noise": noise, "residual_sd": fit["residual_sd"], "r2": fit["r2"],
                                  "knots": [round(float(k), 1) for k in self.knots_], "knot_se": se_steps,
                                  "n_knots": len(fit["knots"]), "fit_from": float(curve.step[start]),
                                  "criterion": {k: (None if v is None else round(float(v), 1)) for k, v in scores.items()},
                                  "residual_correlation": rho, "davies_p": p_end,
                                  "corner_width": fit["width"], "converged": fit["converged"]})
        if not fit["converged"]:
            found.notes.append("segmented fit did not converge; its knots are approximate")
        return found


def select_knots(x: np.ndarray, y: np.ndarray, max_knots: int, smooth: bool, f_scale,
                 w: np.ndarray | None = None, criterion: str = "long-run", penalty: float = 1.0,
                 counts=None) -> tuple[dict, dict, float]:
    """The knots of ``knot_path``, their number chosen by ``criterion`` (``choose_count``)
    among ``counts`` (default 1 .. max_knots). "long-run" refines each count's knots first and
    compares the refined fits (the greedy path's knots sit on evaluations, and a corner
    between two of them costs a spare knot); "bic" (the earlier fit) compares the path's own
    fits and refines the chosen one. Returns the refined fit, the criterion of every count
    tried and the residuals' lag-one correlation."""
    path, residuals = knot_path(x, y, max_knots, w)
    if criterion == "bic":
        counts = range(1, len(path) + 1)
        k, values, rho = choose_count(residuals, counts, criterion)
        return fit_broken_line(x, y, path[k - 1], smooth, f_scale, w), values, rho
    counts = [k for k in (counts or range(1, len(path) + 1)) if 1 <= k <= len(path)] or [len(path)]
    fits = {k: fit_broken_line(x, y, path[k - 1], smooth, f_scale, w) for k in counts}
    k, values, rho = choose_count([fits[k]["residuals"] for k in counts], counts, criterion, penalty)
    return fits[k], values, rho


def knot_path(x: np.ndarray, y: np.ndarray, max_knots: int, w: np.ndarray | None = None
              ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Knots added one at a time where each lowers the squared error most (the others fixed;
    every candidate evaluation scored at once by projection). ``w``: weights of the points
    (rows per cell of a reduced curve). Returns the sorted knots of K = 1 .. max_knots
    (log-steps) and the weighted residuals of each K's least-squares line."""
    sw = np.ones_like(x) if w is None else np.sqrt(w)
    candidates = x[1:-1]
    hinges = sw[:, None] * np.maximum(x[:, None] - candidates[None, :], 0.0)  # a column per candidate knot
    knots, path, residuals = np.zeros(0), [], []
    for _ in range(max(max_knots, 1)):
        X = sw[:, None] * np.column_stack([np.ones_like(x), x, np.maximum(x[:, None] - knots[None, :], 0.0)])
        Q, _ = np.linalg.qr(X)
        r = sw * y - Q @ (Q.T @ (sw * y))
        H = hinges - Q @ (Q.T @ hinges)  # each candidate column, orthogonal to the current design
        norm = np.einsum("ij,ij->j", H, H)
        gain = np.where(norm > 1e-12 * len(y), (H.T @ r) ** 2 / np.maximum(norm, 1e-300), -np.inf)
        j = int(np.argmax(gain))
        knots = np.sort(np.append(knots, candidates[j]))
        path.append(knots)
        residuals.append(r - (H[:, j] @ r) / max(norm[j], 1e-300) * H[:, j])
    return path, residuals


def choose_count(residuals: list[np.ndarray], counts, criterion: str = "long-run", penalty: float = 1.0
                 ) -> tuple[int, dict, float]:
    """The number of knots chosen among ``counts``, ``residuals`` those of their fits.

    "long-run": RSS_K / v + ``penalty`` K (1 + 3) log n, a knot's slope change and its
    location (three parameters, as a change of ``ChangepointDetector``), v the long-run
    variance s^2 (1 + rho) / (1 - rho) (``long_run_variance``) of the residuals of the most
    knots compared (the largest model's variance, as in Mallows' Cp: a fit that misses a
    corner cannot inflate its own penalty, and every count is judged by one v).
    "bic": the plain BIC, n log(RSS_K / n) + (2 K + 2) log n, which assumes independent noise.
    Returns the count, the criterion of every count and the lag-one correlation rho."""
    n = len(residuals[-1])
    rss = np.array([max(float(r @ r), 1e-300) for r in residuals])
    counts = np.asarray(list(counts))
    scale, rho = long_run_variance(residuals[-1], n - 2 * int(counts[-1]) - 2)
    if criterion == "bic":
        values = n * np.log(rss / n) + (2 * counts + 2) * np.log(n)
    else:
        values = rss / max(scale, 1e-300) + penalty * (1 + LOCATION_PARAMETERS) * np.log(n) * counts
    return int(counts[np.argmin(values)]), dict(zip(counts.tolist(), values)), rho


def plateau_start(t1: float | None, knots: np.ndarray) -> float:
    """Log-step where the plateau starts, for Davies' test of a bend after it: the fitted knot
    nearest t1 (the fall's corner; t1 is read 5% above B, on the fall), or t1 if that knot lies
    before it; inf without t1. From t1 itself the test would see the fall's last evaluations
    bend into the plateau, and report a break on runs that never leave it."""
    if t1 is None:
        return np.inf
    x1 = np.log1p(t1)
    return float(max(x1, knots[np.argmin(np.abs(knots - x1))])) if len(knots) else x1


def davies_p(x: np.ndarray, y: np.ndarray, rho: float = 0.0, k: int = 10) -> float:
    """p-value that the slope of y on x changes somewhere inside the range of x: the upper
    bound of Davies (1987, Biometrika 74, 33-43) for the largest |z| of the slope change's
    Wald statistic over ``k`` candidate knots from x[2] to x[-3] (as in Muggeo's R package
    segmented and ``piecewise_regression.davies``), each z divided by sqrt((1 + rho) /
    (1 - rho)): the least squares' standard error assumes independent noise, and AR(1) noise
    of lag-one correlation rho inflates a slope's variance by about that factor."""
    from scipy.stats import norm

    xc = x - x.mean()
    z = np.empty(k)
    for i, theta in enumerate(np.linspace(xc[2], xc[-3], k)):
        X = np.column_stack([np.ones_like(xc), xc, np.maximum(xc - theta, 0.0)])
        coef, rss, *_ = np.linalg.lstsq(X, y, rcond=None)
        s2 = float(rss[0]) / (len(y) - 3) if len(rss) else float(np.sum((y - X @ coef) ** 2)) / (len(y) - 3)
        z[i] = coef[2] / np.sqrt(max(s2 * np.linalg.inv(X.T @ X)[2, 2], 1e-300))
    z /= np.sqrt((1 + rho) / (1 - rho))
    m, v = np.max(np.abs(z)), np.sum(np.abs(np.diff(z)))
    return float(min(2 * (norm.cdf(-m) + v * np.exp(-m * m / 2) / np.sqrt(8 * np.pi)), 1.0))


def _hinges(x: np.ndarray, knots: np.ndarray, width: float, smooth: bool) -> tuple[np.ndarray, np.ndarray]:
    """Hinge columns h(x - k) and their derivative with respect to (x - k)."""
    u = x[:, None] - knots[None, :]
    if not smooth:
        return np.maximum(u, 0.0), (u > 0).astype(float)
    z = u / width
    return width * np.logaddexp(0.0, z), expit(z)


def broken_line(x, coef, knots, width, smooth):
    """The broken line at x (log-steps) for linear coefficients ``coef`` and ``knots``."""
    h, _ = _hinges(np.atleast_1d(x), knots, width, smooth)
    return coef[0] + coef[1] * np.atleast_1d(x) + h @ coef[2:]


def fit_broken_line(x, y, knots0, smooth=False, f_scale=None, w=None) -> dict:
    """Least-squares broken line with the knots started at ``knots0`` (log-steps), the
    squared errors weighted by ``w`` (default 1 each); returns coefficients, knots (sorted),
    their standard errors, and the fit's residual statistics."""
    K = len(knots0)
    sw = np.ones_like(x) if w is None else np.sqrt(w)
    span = x[-1] - x[0]
    width0 = 0.02 * span

    def design(knots, width):
        h, dh = _hinges(x, knots, width, smooth)
        return np.column_stack([np.ones_like(x), x, h]), dh

    X, _ = design(knots0, width0)
    coef0 = np.linalg.lstsq(sw[:, None] * X, sw * y, rcond=None)[0]
    p0 = np.concatenate([coef0, knots0] + ([[np.log(width0)]] if smooth else []))

    def unpack(p):
        return p[:K + 2], p[K + 2:2 * K + 2], (np.exp(p[-1]) if smooth else width0)

    def residual(p):
        coef, knots, width = unpack(p)
        X, _ = design(knots, width)
        return sw * (X @ coef - y)

    def jacobian(p):
        coef, knots, width = unpack(p)
        X, dh = design(knots, width)
        cols = [X, -dh * coef[2:]]
        if smooth:  # d/d(log s) of s log(1 + e^(u/s)) = h - u sigmoid(u/s)
            u = x[:, None] - knots[None, :]
            cols.append(((X[:, 2:] - u * dh) @ coef[2:])[:, None])
        return sw[:, None] * np.column_stack(cols)

    lower = np.concatenate([np.full(K + 2, -np.inf), np.full(K, x[0]), [np.log(1e-4 * span)] if smooth else []])
    upper = np.concatenate([np.full(K + 2, np.inf), np.full(K, x[-1]), [np.log(0.3 * span)] if smooth else []])
    p0 = np.clip(p0, lower + 1e-9, upper - 1e-9)
    kwargs = {"loss": "soft_l1", "f_scale": f_scale} if f_scale else {}
    result = least_squares(residual, p0, jac=jacobian, bounds=(lower, upper), x_scale="jac", max_nfev=200, **kwargs)
    coef, knots, width = unpack(result.x)
    r = result.fun
    dof = max(len(y) - len(result.x), 1)
    residual_sd = float(np.sqrt(np.sum(r**2) / dof))
    try:
        J = result.jac
        cov = np.linalg.pinv(J.T @ J) * residual_sd**2
        knot_se = np.sqrt(np.clip(np.diag(cov)[K + 2:2 * K + 2], 0, None))
    except np.linalg.LinAlgError:
        knot_se = np.full(K, np.nan)
    order = np.argsort(knots)
    coef = np.concatenate([coef[:2], coef[2:][order]])
    total = np.sum(sw**2 * (y - np.average(y, weights=sw**2)) ** 2)
    return {"coef": coef, "knots": knots[order], "width": float(width), "knot_se": knot_se[order],
            "rss": float(np.sum(r**2)), "residuals": r, "residual_sd": residual_sd,
            "r2": float(1 - np.sum(r**2) / total) if total > 0 else float("nan"), "converged": bool(result.success)}
