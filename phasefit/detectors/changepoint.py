"""Changepoint detection with ruptures: phases as regimes of a piecewise-linear loss.

On the log-step axis x = log(1 + step) each phase is close to a straight line (a fall, the
flat plateau, the knowledge drop, the flat saturation), so the boundaries are the changes of
slope. The curve is averaged onto a uniform grid in x, its slope dL/dx is segmented into
pieces of constant mean (ruptures' l2 cost; by default the C implementation of Pelt in
``KernelCPD(kernel="linear")``), the penalty is the BIC one computed from the slope's
estimated noise, a line is fitted to the loss within each piece and adjacent lines are
intersected to place each knot between grid points. The knots are then named t1, t2, t3
with the rules of ``label_knots`` (the threshold bands only name regimes; the regime
changes locate them). The search and cost were chosen by measurement: see
``benchmarks/bench_detect.py --select`` and docs/phasefit.md.
"""

from __future__ import annotations

import numpy as np

from phasefit.curve import Curve, estimate_noise, row_noise
from phasefit.detectors.base import Detector
from phasefit.rules import Boundaries, label_knots

SEARCHES = ("pelt", "binseg", "bottomup", "window", "dynp")
COSTS = ("l2", "clinear")


class ChangepointDetector(Detector):
    """Phase boundaries at the slope changes found by a ruptures search.

    Parameters
    ----------
    search : "pelt" (default), "binseg", "bottomup", "window" or "dynp" (exact, with the
        number of changes chosen by the same penalty).
    cost : "l2" on the slope (default: piecewise-linear loss) or "clinear" on the loss itself
        (ruptures' continuous piecewise-linear cost).
    grid : points of the uniform log-step grid the curve is averaged onto (default 256).
    penalty : multiplier of the BIC penalty 2 sigma^2 log(n), sigma being the noise of the
        segmented signal estimated from the curve itself (default 1: BIC as is).
    min_size : shortest piece, in grid points (default 4).
    t1_tol, t2_tol, t3_tol : the bands that name the knots (``phasefit.rules.label_knots``;
        defaults 0.05, 0.03, 0.1, measured as docs/phasefit.md says).
    """

    name = "changepoint"

    def __init__(self, search: str = "pelt", cost: str = "l2", grid: int = 256, penalty: float = 1.0,
                 min_size: int = 4, t1_tol: float = 0.05, t2_tol: float = 0.03, t3_tol: float = 0.1):
        self.search = search
        self.cost = cost
        self.grid = grid
        self.penalty = penalty
        self.min_size = min_size
        self.t1_tol = t1_tol
        self.t2_tol = t2_tol
        self.t3_tol = t3_tol

    def _boundaries(self, curve: Curve) -> Boundaries:
        if len(curve.loss) < 3 * self.min_size:
            return Boundaries(None, None, None, [f"only {len(curve.loss)} evaluation steps: too few to segment"], {"skipped": True})
        x, g, count = resample(curve, self.grid)
        dx = x[1] - x[0]
        if self.cost == "l2":
            signal = np.diff(g) / dx
            # Noise of the slope from its successive differences (MAD). Interpolated cells
            # (few evaluations early on) repeat a slope and pull this estimate down, so the
            # search errs towards extra changes; the naming of knots tolerates those, while a
            # missed corner would not (measured: estimating sigma on averaged cells only cut
            # the changes found but lost the t1 corner in 1 of 9 runs at 3% step noise).
            sigma = 1.4826 * np.median(np.abs(np.diff(signal))) / np.sqrt(2)
        else:
            signal = g
            sigma = estimate_noise(Curve(np.expm1(x), g, curve.baseline))
        sigma = max(sigma, 1e-9 * max(np.abs(signal).max(), 1.0))
        pen = self.penalty * 2 * sigma**2 * np.log(len(signal))
        bkps = segment(signal, self.search, self.cost, pen, self.min_size)
        # A change before slope b is a knot at grid point b; clinear pieces end on their last point.
        inner = [b if self.cost == "l2" else b - 1 for b in bkps[:-1]]
        knots_x, levels = knots_from_pieces(x, g, [0, *inner, len(x) - 1])
        found = label_knots(np.expm1(knots_x), levels, curve.baseline, self.t1_tol, self.t2_tol, self.t3_tol)
        found.diagnostics = {"noise": row_noise(curve), "signal_noise": float(sigma), "penalty": float(pen),
                             "n_changes": len(bkps) - 1, "knots": [round(float(k), 1) for k in np.expm1(knots_x)]}
        return found


def resample(curve: Curve, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average the loss onto ``n`` evenly spaced points of log(1 + step); fill empty cells
    linearly. Returns the grid, the loss there and the number of evaluations in each cell
    (a reduced curve's points count, and weigh, as the rows they average)."""
    xs = curve.log_step
    x = np.linspace(xs[0], xs[-1], n)
    cell = np.clip(np.rint((xs - x[0]) / (x[1] - x[0])).astype(int), 0, n - 1)
    w = np.ones(len(xs)) if curve.weight is None else curve.weight
    count = np.bincount(cell, weights=w, minlength=n)
    total = np.bincount(cell, weights=w * curve.loss, minlength=n)
    filled = count > 0
    g = np.empty(n)
    g[filled] = total[filled] / count[filled]
    g[~filled] = np.interp(x[~filled], xs, curve.loss)
    return x, g, count


def segment(signal: np.ndarray, search: str, cost: str, pen: float, min_size: int) -> list[int]:
    """Breakpoints (ruptures convention: ends of pieces, the last is len(signal))."""
    import ruptures as rpt  # imported on first use: it pulls in scipy.signal and scipy.stats
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {', '.join(SEARCHES)}, not {search!r}")
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {', '.join(COSTS)}, not {cost!r}")
    signal = signal.reshape(-1, 1)
    if cost == "l2" and search in ("pelt", "dynp"):
        algo = rpt.KernelCPD(kernel="linear", min_size=min_size).fit(signal)  # C implementation
        if search == "pelt":
            return algo.predict(pen=pen)
        return _penalised_dynp(algo, rpt.costs.CostL2().fit(signal), len(signal), pen, min_size)
    if search == "dynp":
        algo = rpt.Dynp(model=cost, min_size=min_size, jump=1).fit(signal)
        return _penalised_dynp(algo, rpt.costs.cost_factory(cost).fit(signal), len(signal), pen, min_size)
    kinds = {"pelt": rpt.Pelt, "binseg": rpt.Binseg, "bottomup": rpt.BottomUp, "window": rpt.Window}
    if search == "window":
        algo = rpt.Window(model=cost, width=4 * min_size, jump=1).fit(signal)
    else:
        algo = kinds[search](model=cost, min_size=min_size, jump=1).fit(signal)
    return algo.predict(pen=pen)


def _penalised_dynp(algo, cost, n: int, pen: float, min_size: int, max_changes: int = 8) -> list[int]:
    """Exact segmentation for 1..max_changes changes; keep the one of least penalised cost."""
    best, best_value = [n], cost.sum_of_costs([n])
    for k in range(1, min(max_changes, n // min_size - 1) + 1):
        bkps = algo.predict(n_bkps=k)
        value = cost.sum_of_costs(bkps) + pen * k
        if value < best_value:
            best, best_value = bkps, value
    return best


def knots_from_pieces(x: np.ndarray, g: np.ndarray, edges: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Fit a line to each piece [edges[j], edges[j+1]] and intersect neighbours.

    Returns the knots (log-steps, first and last point included) and the fitted loss there.
    A knot stays within one grid cell of its piece boundary.
    """
    # Least-squares line of every piece [a, b] (both ends included) from cumulative sums.
    start = np.asarray(edges[:-1])
    stop = np.maximum(np.asarray(edges[1:]) + 1, start + 2)
    cum = [np.concatenate([[0.0], np.cumsum(v)]) for v in (np.ones_like(x), x, g, x * x, x * g)]
    n, sx, sy, sxx, sxy = (c[stop] - c[start] for c in cum)
    slopes = (n * sxy - sx * sy) / np.maximum(n * sxx - sx * sx, 1e-300)
    lines = list(zip(slopes, (sy - slopes * sx) / n))
    dx = x[1] - x[0]
    knots, levels = [x[0]], [lines[0][0] * x[0] + lines[0][1]]
    for (a1, b1), (a2, b2), edge in zip(lines[:-1], lines[1:], edges[1:-1]):
        xk = x[edge] if a1 == a2 else (b2 - b1) / (a1 - a2)
        xk = float(np.clip(xk, x[edge] - dx, x[edge] + dx))
        knots.append(xk)
        levels.append(0.5 * (a1 * xk + b1 + a2 * xk + b2))
    knots.append(x[-1])
    levels.append(lines[-1][0] * x[-1] + lines[-1][1])
    return np.array(knots), np.array(levels)
