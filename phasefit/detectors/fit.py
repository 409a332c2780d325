"""Segmented curve fits with scipy: the phases as a broken line in log-step.

On x = log(1 + step) the loss is modelled as a continuous broken line with three knots,

    L(x) = c0 + c1 x + c2 h(x - k1) + c3 h(x - k2) + c4 h(x - k3),

with h(u) = max(u, 0) ("segmented") or the smooth hinge s log(1 + exp(u / s)) whose corner
width s is fitted too ("smooth", for curves whose transitions are rounded). The knots are
the regime changes (fall -> plateau -> knowledge drop -> saturation); they are named t1, t2,
t3 by ``label_knots``. The fit is ``scipy.optimize.least_squares`` with an analytic Jacobian
and a soft-L1 loss scaled by the estimated noise, so a few outlying evaluations cannot bend
the line; standard errors of the knots come from the Jacobian at the optimum.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import least_squares
from scipy.special import expit

from phasefit.curve import Curve, estimate_noise
from phasefit.detectors.base import Boundaries, Detector, label_knots

MODELS = ("segmented", "smooth")


class SegmentedFitDetector(Detector):
    """Phase boundaries at the knots of a broken line fitted on the log-step axis.

    Parameters
    ----------
    model : "segmented" (default: sharp corners) or "smooth" (rounded corners of fitted width).
    robust : scale of the soft-L1 loss in units of the estimated noise (default 3; None: plain
        least squares).
    t1_tol, t2_tol, t3_tol : the bands that name the knots (see ``label_knots``).
    init : optional (t1, t2, t3) in steps to start from; by default the knots start where the
        loss crosses bands of 10% around the baseline and 10% above the final level.
    """

    name = "fit"

    def __init__(self, model: str = "segmented", robust: float | None = 3.0, t1_tol: float = 0.05,
                 t2_tol: float = 0.05, t3_tol: float = 0.1, init: tuple | None = None):
        self.model = model
        self.robust = robust
        self.t1_tol = t1_tol
        self.t2_tol = t2_tol
        self.t3_tol = t3_tol
        self.init = init

    def for_replicates(self) -> "SegmentedFitDetector":
        """Replicates start from this fit's knots: same optimum basin, a few iterations."""
        params = self.get_params()
        if getattr(self, "knots_", None) is not None:
            params["init"] = tuple(float(k) for k in self.knots_)
        return type(self)(**params)

    def _boundaries(self, curve: Curve) -> Boundaries:
        self.knots_ = None
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, not {self.model!r}")
        if len(curve.loss) < 8:
            return Boundaries(None, None, None, [f"only {len(curve.loss)} evaluation steps: too few to fit"], {"skipped": True})
        x, y = curve.log_step, curve.loss
        noise = estimate_noise(curve)
        knots0 = self._initial_knots(curve)
        fit = fit_broken_line(x, y, knots0, smooth=self.model == "smooth",
                              f_scale=None if self.robust is None else self.robust * max(noise, 1e-6))
        order = np.argsort(fit["knots"])
        self.knots_ = np.expm1(fit["knots"][order])
        knots = np.concatenate([[x[0]], fit["knots"][order], [x[-1]]])
        knots = np.clip(knots, x[0], x[-1])
        levels = broken_line(knots, fit["coef"], fit["knots"], fit["width"], smooth=False)
        found = label_knots(np.expm1(knots), levels, curve.baseline, self.t1_tol, self.t2_tol, self.t3_tol)
        # A knot's standard error in steps, by the delta method from log-step.
        se_steps = [float(np.expm1(k) * s) if np.isfinite(s) else None for k, s in zip(knots[1:-1], fit["knot_se"][order])]
        found.diagnostics = {"noise": noise, "residual_sd": fit["residual_sd"], "r2": fit["r2"],
                             "knots": [round(float(k), 1) for k in np.expm1(knots[1:-1])], "knot_se": se_steps,
                             "corner_width": fit["width"], "converged": fit["converged"]}
        if not fit["converged"]:
            found.notes.append("segmented fit did not converge; its knots are approximate")
        return found

    def _initial_knots(self, curve: Curve) -> np.ndarray:
        x, y, base = curve.log_step, curve.loss, curve.baseline
        if self.init is not None:
            return np.log1p(np.asarray(self.init, dtype=float))
        n = len(y)
        end = float(np.median(y[-max(n // 20, 3):]))
        near = np.flatnonzero(y <= base * 1.1)
        i1 = near[0] if len(near) else n // 4
        below = np.flatnonzero(y[i1:] >= base * 0.9) + i1
        i2 = below[-1] if len(below) else (i1 + n) // 2
        high = np.flatnonzero(y > end + 0.1 * (base - end))
        i3 = max(high[-1] if len(high) else i2 + 1, i2 + 1)
        idx = np.clip([i1, i2, i3], 1, n - 2)
        return x[idx].astype(float)


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


def fit_broken_line(x, y, knots0, smooth=False, f_scale=None) -> dict:
    """Least-squares broken line with three knots; returns coefficients, knots and errors."""
    span = x[-1] - x[0]
    width0 = 0.02 * span

    def design(knots, width):
        h, dh = _hinges(x, knots, width, smooth)
        return np.column_stack([np.ones_like(x), x, h]), dh

    X, _ = design(knots0, width0)
    coef0 = np.linalg.lstsq(X, y, rcond=None)[0]
    p0 = np.concatenate([coef0, knots0] + ([[np.log(width0)]] if smooth else []))

    def unpack(p):
        return p[:5], p[5:8], (np.exp(p[8]) if smooth else width0)

    def residual(p):
        coef, knots, width = unpack(p)
        X, _ = design(knots, width)
        return X @ coef - y

    def jacobian(p):
        coef, knots, width = unpack(p)
        X, dh = design(knots, width)
        cols = [X, -dh * coef[2:]]
        if smooth:  # d/d(log s) of s log(1 + e^(u/s)) = h - u sigmoid(u/s)
            u = x[:, None] - knots[None, :]
            cols.append(((X[:, 2:] - u * dh) @ coef[2:])[:, None])
        return np.column_stack(cols)

    lower = np.concatenate([np.full(5, -np.inf), np.full(3, x[0]), [np.log(1e-4 * span)] if smooth else []])
    upper = np.concatenate([np.full(5, np.inf), np.full(3, x[-1]), [np.log(0.3 * span)] if smooth else []])
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
        knot_se = np.sqrt(np.clip(np.diag(cov)[5:8], 0, None))
    except np.linalg.LinAlgError:
        knot_se = np.full(3, np.nan)
    total = np.sum((y - y.mean()) ** 2)
    return {"coef": coef, "knots": knots, "width": float(width), "knot_se": knot_se,
            "residual_sd": residual_sd, "r2": float(1 - np.sum(r**2) / total) if total > 0 else float("nan"),
            "converged": bool(result.success)}
