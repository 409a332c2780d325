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
  (every candidate evaluation scored at once by projection), all knots then refined with
  ``scipy.optimize.least_squares`` (analytic Jacobian, soft-L1 loss scaled to ``robust``
  times the estimated noise, so a few outliers cannot bend it); K is chosen by BIC.
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

from phasefit.curve import Curve, row_noise
from phasefit.detectors.base import Detector
from phasefit.rules import Boundaries, rules_on

MODELS = ("segmented", "smooth")
GRID = 1024  # points the fitted line is read on (uniform in log-step, knots added)


class SegmentedFitDetector(Detector):
    """Phase boundaries read off a broken line fitted on the log-step axis.

    Parameters
    ----------
    model : "segmented" (default: sharp corners) or "smooth" (rounded corners of fitted width).
    robust : scale of the soft-L1 loss in units of the estimated noise (default 3; None: plain
        least squares).
    max_knots : most knots tried; BIC picks the number (default 5: the end of the fall, the
        plateau's two corners, saturation, and one for a rounded corner).
    fit_band : the fit starts at the last evaluation above B (1 + fit_band) before the loss
        first comes within it (default 0.25: far enough above the t1 band of 5% to place the
        fall's end, close enough that the initial fall's curvature stays out).
    t1_tol, t2_tol, t3_tol, tail : the threshold rules applied to the fitted line (defaults as
        for ``ThresholdDetector``).
    init : optional knots (steps) to start from, their number fixing K; used for bootstrap
        replicates, which start from the full curve's knots.
    """

    name = "fit"

    def __init__(self, model: str = "segmented", robust: float | None = 3.0, max_knots: int = 5,
                 fit_band: float = 0.25, t1_tol: float = 0.05, t2_tol: float = 0.02, t3_tol: float = 0.02,
                 tail: float = 0.05, init: tuple | None = None):
        self.model = model
        self.robust = robust
        self.max_knots = max_knots
        self.fit_band = fit_band
        self.t1_tol = t1_tol
        self.t2_tol = t2_tol
        self.t3_tol = t3_tol
        self.tail = tail
        self.init = init

    def for_replicates(self) -> "SegmentedFitDetector":
        """Replicates start from this fit's knots: same number, same basin, a few iterations."""
        params = self.get_params()
        if getattr(self, "knots_", None) is not None:
            params["init"] = tuple(float(k) for k in self.knots_)
        return type(self)(**params)

    def _boundaries(self, curve: Curve) -> Boundaries:
        self.knots_ = None
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, not {self.model!r}")
        if len(curve.loss) < 8:
            return Boundaries(None, None, None, [f"only {len(curve.loss)} evaluation steps: too few to fit"],
                              {"skipped": True})
        base = curve.baseline
        near = np.flatnonzero(curve.loss <= base * (1 + self.fit_band))
        if len(near) == 0:
            return Boundaries(None, None, None, [f"loss never reached the baseline: lowest {curve.loss.min():.3g} "
                                                 f"nats, baseline {base:.3g} nats"])
        start = max(near[0] - 1, 0)
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
            bic = {len(knots0): None}
        else:
            fit, bic = select_knots(x, y, min(self.max_knots, (len(y) - 2) // 3), smooth, f_scale, w)
        self.knots_ = np.expm1(fit["knots"])

        grid = np.union1d(np.linspace(x[0], x[-1], GRID), fit["knots"])
        line = broken_line(grid, fit["coef"], fit["knots"], fit["width"], smooth)
        # The fitted range starts above the t1 band, so the rules see the whole approach to B.
        found = rules_on(Curve(np.expm1(grid), line, base, None, curve.run_length), self.t1_tol, self.t2_tol,
                         self.t3_tol, self.tail, subject="fitted loss", tail_is_missing=True)
        # A knot's standard error in steps, by the delta method from log-step.
        se_steps = [float(np.expm1(k) * s) if np.isfinite(s) else None for k, s in zip(fit["knots"], fit["knot_se"])]
        found.diagnostics.update({"noise": noise, "residual_sd": fit["residual_sd"], "r2": fit["r2"],
                                  "knots": [round(float(k), 1) for k in self.knots_], "knot_se": se_steps,
                                  "n_knots": len(fit["knots"]), "fit_from": float(curve.step[start]),
                                  "bic": {k: (None if v is None else round(float(v), 1)) for k, v in bic.items()},
                                  "corner_width": fit["width"], "converged": fit["converged"]})
        if not fit["converged"]:
            found.notes.append("segmented fit did not converge; its knots are approximate")
        return found


def select_knots(x: np.ndarray, y: np.ndarray, max_knots: int, smooth: bool, f_scale,
                 w: np.ndarray | None = None) -> tuple[dict, dict]:
    """Knots added one at a time where each lowers the squared error most (the others fixed;
    every candidate evaluation scored at once by projection), the number K chosen by BIC,
    n log(RSS / n) + (2 K + 2) log n, then all K knots refined together. ``w``: weights of
    the points (rows per cell of a reduced curve; the squared errors are weighted). Returns
    the refined fit and the BIC of every K tried."""
    n = len(y)
    sw = np.ones_like(x) if w is None else np.sqrt(w)
    candidates = x[1:-1]
    hinges = sw[:, None] * np.maximum(x[:, None] - candidates[None, :], 0.0)  # a column per candidate knot
    knots, chosen, bic = np.zeros(0), np.zeros(0), {}
    for k in range(1, max(max_knots, 1) + 1):
        X = sw[:, None] * np.column_stack([np.ones_like(x), x, np.maximum(x[:, None] - knots[None, :], 0.0)])
        Q, _ = np.linalg.qr(X)
        r = sw * y - Q @ (Q.T @ (sw * y))
        H = hinges - Q @ (Q.T @ hinges)  # each candidate column, orthogonal to the current design
        norm = np.einsum("ij,ij->j", H, H)
        gain = np.where(norm > 1e-12 * n, (H.T @ r) ** 2 / np.maximum(norm, 1e-300), -np.inf)
        j = int(np.argmax(gain))
        knots = np.sort(np.append(knots, candidates[j]))
        rss = max(float(r @ r - gain[j]), 1e-300)
        bic[k] = n * np.log(rss / n) + (2 * k + 2) * np.log(n)
        if len(chosen) == 0 or bic[k] < bic[len(chosen)]:
            chosen = knots
    return fit_broken_line(x, y, chosen, smooth, f_scale, w), bic


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
            "rss": float(np.sum(r**2)), "residual_sd": residual_sd,
            "r2": float(1 - np.sum(r**2) / total) if total > 0 else float("nan"), "converged": bool(result.success)}
