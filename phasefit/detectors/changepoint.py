"""Changepoint detection: phases as regimes of a piecewise-linear loss.

On the log-step axis x = log(1 + step) each phase is close to a straight line (a fall, the
flat plateau, the knowledge drop, the flat saturation), so the boundaries are the changes of
slope. By default (``cost="line"``) the evaluations themselves, with no regrid, are cut into
pieces that each get their own least-squares line in x, every point weighted by its local
noise (``phasefit.curve.local_noise``); the cut is the exact minimiser of the weighted
residual sum plus a penalty per change (the objective of Pelt, solved by optimal
partitioning over all cut points at once). The penalty is stated, not tuned per curve:
``penalty`` x 5 log n per change (BIC, with a change's new intercept and slope as two
parameters and its location as three: a location maximised over n candidates gains about
2 log n by chance alone), in units of the residuals' long-run variance, s^2 (1 + rho) /
(1 - rho), s^2 and the lag-one correlation rho measured on the residuals of the segmentation
itself, iterated to a fixed point from plain BIC (the shared training noise of a step is
correlated from one evaluation to the next; an independent-noise penalty took every wiggle of
it for a change). Adjacent lines are intersected to place each knot between the evaluations
at the change, the continuous broken line through the knots gives the level at each, and the
knots are named t1, t2, t3 with ``label_knots`` (the bands only name regimes; the regime
changes locate them), except where no knot lies in the plateau band: there t1 and t2 are
the broken line's band crossings (``read_unresolved_plateau``).

The older search on a 256-point regrid of the slope with ruptures (``cost="l2"`` or
``"clinear"``, any ``search``) is kept for comparison (``benchmarks/bench_detect.py
--select``); docs/phasefit.md has the measurements behind the choice.
"""

from __future__ import annotations

import numpy as np

from phasefit.curve import Curve, estimate_noise, local_noise, long_run_variance, row_noise
from phasefit.detectors.base import Detector
from phasefit.rules import Boundaries, label_knots

SEARCHES = ("pelt", "binseg", "bottomup", "window", "dynp")
COSTS = ("line", "l2", "clinear")
LOCATION_PARAMETERS = 3  # a change's location counts as three parameters in the BIC (above)


class ChangepointDetector(Detector):
    """Phase boundaries at the slope changes found by a ruptures search.

    Parameters
    ----------
    cost : "line" (default: a least-squares line per piece of the evaluations, weighted by
        their local noise, the penalty from the residuals' long-run variance), or, on a
        256-point regrid with a ruptures search, "l2" on the slope or "clinear" on the loss
        (ruptures' continuous piecewise-linear cost), with the BIC penalty of the slope's
        noise estimated from its successive differences.
    search : for the regrid costs: "pelt" (default), "binseg", "bottomup", "window" or
        "dynp" (exact, with the number of changes chosen by the same penalty). The "line"
        cost is always solved exactly (the segmentation Pelt finds).
    grid : points of the uniform log-step grid of the regrid costs (default 256).
    penalty : multiplier of the penalty (default 1: the stated criterion as is).
    min_size : shortest piece, in evaluations ("line", default 2) or grid points (the regrid
        costs, default 4).
    t1_tol, t2_tol, t3_tol : the bands that name the knots (``phasefit.rules.label_knots``;
        defaults 0.10, 0.03, 0.10, measured as docs/phasefit.md says).
    """

    name = "changepoint"

    def __init__(self, search: str = "pelt", cost: str = "line", grid: int = 256, penalty: float = 1.0,
                 min_size: int | None = None, t1_tol: float = 0.1, t2_tol: float = 0.03, t3_tol: float = 0.1):
        self.search = search
        self.cost = cost
        self.grid = grid
        self.penalty = penalty
        self.min_size = min_size
        self.t1_tol = t1_tol
        self.t2_tol = t2_tol
        self.t3_tol = t3_tol

    def _boundaries(self, curve: Curve) -> Boundaries:
        if self.cost not in COSTS:
            raise ValueError(f"cost must be one of {', '.join(COSTS)}, not {self.cost!r}")
        min_size = self.min_size or (2 if self.cost == "line" else 4)
        if len(curve.loss) < max(3 * min_size, 6):
            return Boundaries(None, None, None, [f"only {len(curve.loss)} evaluation steps: too few to segment"], {"skipped": True})
        if self.cost == "line":
            if self.search != "pelt":
                raise ValueError(f"the line cost is solved exactly (search 'pelt'), not with {self.search!r}")
            knots_x, levels, diagnostics = self._line_knots(curve, min_size)
        else:
            knots_x, levels, diagnostics = self._regrid_knots(curve, min_size)
        found = label_knots(np.expm1(knots_x), levels, curve.baseline, self.t1_tol, self.t2_tol, self.t3_tol)
        if self.cost == "line":
            found = read_unresolved_plateau(found, knots_x, levels, curve.baseline, self.t1_tol, self.t2_tol)
        found.diagnostics = {"noise": row_noise(curve), **diagnostics,
                             "knots": [round(float(k), 1) for k in np.expm1(knots_x)]}
        return found

    def _line_knots(self, curve: Curve, min_size: int) -> tuple[np.ndarray, np.ndarray, dict]:
        x, y = curve.log_step, curve.loss
        n = len(y)
        w = local_noise(curve, max(3, n // 20)) ** -2.0
        per_change = self.penalty * (2 + LOCATION_PARAMETERS) * np.log(n)
        bkps, scale, rho, seen = optimal_partition(x, y, w, per_change, min_size), 1.0, 0.0, set()
        while tuple(bkps) not in seen:  # the fixed point: the penalty from the residuals it selects
            seen.add(tuple(bkps))
            scale, rho = piece_residual_variance(x, y, w, bkps)
            bkps = optimal_partition(x, y, w, per_change * scale, min_size)
        knots_x, levels = continuous_knots(x, y, w, bkps)
        return knots_x, levels, {"penalty": float(per_change * scale), "residual_correlation": rho,
                                 "n_changes": len(bkps) - 1}

    def _regrid_knots(self, curve: Curve, min_size: int) -> tuple[np.ndarray, np.ndarray, dict]:
        x, g, count = resample(curve, self.grid)
        dx = x[1] - x[0]
        if self.cost == "l2":
            signal = np.diff(g) / dx
            # Noise of the slope from its successive differences (MAD); interpolated cells
            # repeat a slope and pull it down (the reason the "line" cost replaced this one).
            sigma = 1.4826 * np.median(np.abs(np.diff(signal))) / np.sqrt(2)
        else:
            signal = g
            sigma = estimate_noise(Curve(np.expm1(x), g, curve.baseline))
        sigma = max(sigma, 1e-9 * max(np.abs(signal).max(), 1.0))
        pen = self.penalty * 2 * sigma**2 * np.log(len(signal))
        bkps = segment(signal, self.search, self.cost, pen, min_size)
        # A change before slope b is a knot at grid point b; clinear pieces end on their last point.
        inner = [b if self.cost == "l2" else b - 1 for b in bkps[:-1]]
        knots_x, levels = knots_from_pieces(x, g, [0, *inner, len(x) - 1])
        return knots_x, levels, {"signal_noise": float(sigma), "penalty": float(pen), "n_changes": len(bkps) - 1}


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


def _line_sums(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> list[np.ndarray]:
    """Cumulative weighted sums (1, x, y, xx, xy, yy) from which any piece's line is O(1)."""
    return [np.concatenate([[0.0], np.cumsum(v)]) for v in (w, w * x, w * y, w * x * x, w * x * y, w * y * y)]


def _piece_lines(sums: list[np.ndarray], start, stop) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted least-squares line of the points [start, stop) of each piece: slope,
    intercept and residual sum of squares (arrays over the pieces)."""
    n, sx, sy, sxx, sxy, syy = (c[stop] - c[start] for c in sums)
    det = n * sxx - sx * sx
    sloped = det > 1e-12 * np.maximum(n * sxx, 1e-300)  # a piece of one distinct x is flat
    slope = np.where(sloped, (n * sxy - sx * sy) / np.where(sloped, det, 1.0), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):  # a piece of zero weight (no finite point): NaN
        intercept = (sy - slope * sx) / n
    return slope, intercept, np.maximum(syy - intercept * sy - slope * sxy, 0.0)


def optimal_partition(x: np.ndarray, y: np.ndarray, w: np.ndarray, pen: float, min_size: int = 2) -> list[int]:
    """The cut of the points into pieces of at least ``min_size`` that minimises the weighted
    residual sum of squares of each piece's own line plus ``pen`` per change; breakpoints in
    the ruptures convention (ends of pieces, the last is len(y)).

    This is Pelt's objective solved without pruning, every candidate start of the last piece
    scored at once: ruptures' Pelt with this cost as a custom ``BaseCost`` gives the same
    cut, but its Python loop took 1.1 s on 1024 points where this takes 0.03 s."""
    n = len(y)
    sums = _line_sums(x, y, w)
    best = np.full(n + 1, np.inf)
    best[0] = -pen
    last = np.zeros(n + 1, dtype=int)
    for stop in range(min_size, n + 1):
        starts = np.arange(0, stop - min_size + 1)
        value = best[starts] + _piece_lines(sums, starts, stop)[2] + pen
        j = int(np.argmin(value))
        best[stop], last[stop] = value[j], starts[j]
    bkps, stop = [], n
    while stop > 0:
        bkps.append(stop)
        stop = int(last[stop])
    return bkps[::-1]


def piece_residual_variance(x, y, w, bkps) -> tuple[float, float]:
    """Long-run variance (``phasefit.curve.long_run_variance``, in units of the weights) of
    the residuals of each piece's line, the correlation taken within pieces; and rho."""
    edges = np.array([0, *bkps])
    slope, intercept, _ = _piece_lines(_line_sums(x, y, w), edges[:-1], edges[1:])
    piece = np.repeat(np.arange(len(bkps)), np.diff(edges))
    r = np.sqrt(w) * (y - (slope[piece] * x + intercept[piece]))
    return long_run_variance(r, len(y) - 2 * len(bkps), piece[1:] == piece[:-1])


def continuous_knots(x, y, w, bkps) -> tuple[np.ndarray, np.ndarray]:
    """Knots where the lines of adjacent pieces meet (kept between the evaluations at the
    change), with the first and last evaluation; and the level of the continuous broken line
    fitted through them (weighted least squares), which pins a short piece's level by its
    neighbours."""
    edges = np.array([0, *bkps])
    slope, intercept, _ = _piece_lines(_line_sums(x, y, w), edges[:-1], edges[1:])
    inner = []
    for j, edge in enumerate(edges[1:-1]):
        lo, hi = x[edge - 1], x[edge]
        ds = slope[j] - slope[j + 1]
        meet = (intercept[j + 1] - intercept[j]) / ds if ds != 0 else 0.5 * (lo + hi)
        inner.append(float(np.clip(meet, lo, hi)))
    inner = np.array(inner)
    design = np.column_stack([np.ones_like(x), x, np.maximum(x[:, None] - inner[None, :], 0.0)])
    coef = np.linalg.lstsq(np.sqrt(w)[:, None] * design, np.sqrt(w) * y, rcond=None)[0]
    knots_x = np.r_[x[0], inner, x[-1]]
    levels = coef[0] + coef[1] * knots_x + np.maximum(knots_x[:, None] - inner[None, :], 0.0) @ coef[2:]
    return knots_x, levels


def read_unresolved_plateau(found: Boundaries, knots_x: np.ndarray, levels: np.ndarray, baseline: float,
                            t1_tol: float, t2_tol: float) -> Boundaries:
    """t1 and t2 where the broken line crosses the bands, where no knot lies between them.

    A real run's plateau is often a bend of a few evaluations, shorter than the search
    resolves: one piece then runs from the fall through the plateau into the drop, and the
    knots alone would put t1 and t2 on one knot (or t1 past the drop). There t2 is read where
    the broken line leaves B (1 - t2_tol) (and t1, if its piece came down from above the t1
    band to below the t2 band, where the line reaches B (1 + t1_tol)): the crossings the
    threshold rules read on the evaluations."""
    if found.t1 is None:
        return found
    steps = np.expm1(knots_x)
    i1 = int(np.searchsorted(steps, found.t1))
    low, high = baseline * (1 - t2_tol), baseline * (1 + t1_tol)
    t1, t2 = found.t1, found.t2
    if i1 > 0 and levels[i1] < low and levels[i1 - 1] > high:  # one piece over the whole band
        t1 = crossing(knots_x, levels, i1 - 1, high)
        t2 = crossing(knots_x, levels, i1 - 1, low)
    elif t2 is not None and t2 == found.t1 and i1 + 1 < len(levels) and levels[i1 + 1] < low:
        t2 = crossing(knots_x, levels, i1, low)
    if (t1, t2) == (found.t1, found.t2):
        return found
    if found.t2 is None:  # t1 was the last knot: nothing after it was named
        found.notes = [n for n in found.notes if not n.startswith("no plateau end")]
    return Boundaries(t1, t2, found.t3, found.notes, found.diagnostics)


def crossing(knots_x: np.ndarray, levels: np.ndarray, j: int, level: float) -> float:
    """Step at which the broken line's piece from knot j to knot j + 1 passes ``level``."""
    share = (levels[j] - level) / (levels[j] - levels[j + 1])
    return float(np.expm1(knots_x[j] + share * (knots_x[j + 1] - knots_x[j])))
