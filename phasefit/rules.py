"""The phase rules: what t1, t2, t3 are, read off a curve, and the one crossing helper.

With L(t) the population loss and B the baseline (nats):

- t1 = the first step at which L <= B (1 + t1_tol): the marginals are learned;
- t2 = the plateau's end, relative to the run's own plateau: with P(t) the line (level and
  trend, in log-step) fitted to the plateau's evaluations, where the line of the early drop
  (the evaluations between 10% and 80% of the way from P to the final level) meets P, the
  drop being the part of the curve after which L stays more than t2_tol B below P for good
  (the extrapolated onset; at a corner of a broken line exactly, whatever the evaluation
  grid; a plateau that drifts does not move it, nor does one evaluation back in the band);
- t3 = the step after which L stays below E + t3_tol (B - E), with E the final level (the
  median loss over the last ``tail`` share of the run): knowledge is saturated.

``threshold_rules`` applies them to many curves at once (the bootstrap replicates),
``rules_on`` to one curve with a note for a missing boundary, ``label_knots`` to the knots
of a fitted piecewise-linear curve. Every crossing between two evaluations is interpolated by
``crossing``: on log(1 + step) for the phase boundaries (the phases are close to straight
lines there), on step for the intervention measures (short spans after an event).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from phasefit.curve import Curve

BOUNDARIES = ("t1", "t2", "t3")
T2_TOLS = (0.01, 0.02, 0.05)  # the t2 rule's band (share of B) around its default 0.02: how far results depend on it


@dataclass
class Boundaries:
    """The three phase boundaries of one curve, in training steps."""

    t1: float | None  # marginals learned: the loss reaches the baseline
    t2: float | None  # plateau end: the loss leaves its own plateau downwards for good
    t3: float | None  # knowledge saturated: the loss reaches its final level
    notes: list[str] = field(default_factory=list)
    diagnostics: dict = field(default_factory=dict)

    @property
    def plateau_length(self) -> float | None:
        return None if self.t1 is None or self.t2 is None else self.t2 - self.t1

    def as_array(self) -> np.ndarray:
        return np.array([np.nan if t is None else t for t in (self.t1, self.t2, self.t3)], dtype=float)


def crossing(x: np.ndarray, values: np.ndarray, i: np.ndarray, level) -> np.ndarray:
    """Where each row of ``values`` (rows, evaluations) crosses ``level`` (a number or one per
    row) between evaluations i and i + 1 (one per row, clipped to the evaluations), linearly
    on the axis ``x`` of the evaluations (``curve.log_step`` or the steps); the result is on
    that axis. Equal values, or a NaN, give evaluation i + 1."""
    n = values.shape[1]
    rows = np.arange(values.shape[0])
    i = np.clip(i, 0, n - 2)
    y0, y1 = values[rows, i], values[rows, i + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(y1 != y0, (level - y0) / (y1 - y0), 1.0)
    f = np.clip(np.nan_to_num(f, nan=1.0), 0.0, 1.0)
    return x[i] + f * (x[i + 1] - x[i])


def final_level(curve: Curve, L: np.ndarray, tail: float) -> tuple[int, np.ndarray]:
    """The first evaluation of the last ``tail`` of the run (at least 3 evaluations) and each
    row's final level there, the median of ``L`` (rows of losses at ``curve.step``) from it on."""
    first = min(int(np.searchsorted(curve.step, curve.step[-1] - tail * curve.run_length)), L.shape[1] - 3)
    return first, np.median(L[:, first:], axis=1)


MIN_TREND = 3  # plateau evaluations needed to fit its line; fewer: the expected level (B), flat
WIDE = 0.1  # the first plateau window: within this share of the level (a drift of up to 10%)
TREND_MAX = 0.2  # a plateau's trend, at most this share of the drop's slope (else: a flat plateau)
ONSET_SHARE = (0.1, 0.8)  # the part of the drop whose line is extrapolated back to the plateau
CORNER_REFITS = 2  # the plateau's line refitted on the evaluations before the corner found


def _line(x: np.ndarray, y: np.ndarray, mask: np.ndarray, min_points: int, level0) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares line y = a + b x through the points of each row where ``mask`` holds;
    ``level0`` (one per row, or a number) and no slope where a row has fewer than
    ``min_points`` (too few to tell a line from noise)."""
    m = mask.astype(float)
    count = m.sum(axis=1)
    y = np.nan_to_num(y)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = (m * x).sum(axis=1) / count
        my = (m * y).sum(axis=1) / count
        dx = np.where(mask, x - mx[:, None], 0.0)
        sxx = (dx * dx).sum(axis=1)
        b = (dx * y).sum(axis=1) / sxx
    enough = (count >= min_points) & (sxx > 0)
    return np.where(enough, my - b * mx, level0), np.where(enough, b, 0.0)


def departure(x: np.ndarray, Y: np.ndarray, start: np.ndarray, level0, end: np.ndarray, tol: float,
              iterations: int = 2, first: np.ndarray | None = None) -> dict:
    """Where each row of ``Y`` (rows, evaluations on the axis ``x``) leaves its own plateau
    downwards for good, from evaluation ``start`` on (one per row).

    The plateau is a line P(x) = a + b x (its level and trend), fitted to the row's
    evaluations from ``first`` (default: the first from ``start`` on at most ``tol`` above
    ``level0``) to the last that is not more than ``tol`` below P (the band), refitted
    ``iterations`` times from P = ``level0``; ``level0`` and ``end`` are numbers or one per row.
    Returns, per row: ``onset``, where the line through the early drop (the evaluations between
    ONSET_SHARE of the way from P to ``end``, at least the first two below the band) meets P,
    the extrapolated onset, at a corner of a broken line exactly, whatever the spacing of
    evaluations (or, for a drop that gathers pace, where the row falls through the band for
    good); ``left``, False where the row is still in the band at its last evaluation; ``level``
    and ``trend``, P's coefficients.
    """
    rows, n = Y.shape
    index = np.arange(n)[None]
    level0 = np.broadcast_to(np.asarray(level0, dtype=float), (rows,))
    end = np.broadcast_to(np.asarray(end, dtype=float), (rows,))
    if first is None:
        near = (Y <= level0[:, None] + tol) & (index >= start[:, None])
        first = np.where(near.any(axis=1), near.argmax(axis=1), start)
    sloped = _departure(x, Y, start, first, level0, end, tol, iterations, MIN_TREND)
    # A "plateau" falling at more than TREND_MAX of the drop's pace is the drop's slow start (real
    # runs), not a drifting plateau: such rows are read against a flat plateau at level0.
    fast = np.abs(sloped["trend"]) > TREND_MAX * np.abs(sloped["drop_slope"])
    if not fast.any():
        return sloped
    flat = _departure(x, Y, start, first, level0, end, tol, 0, n + 1)
    return {k: np.where(fast, flat[k], v) for k, v in sloped.items()}


def _departure(x, Y, start, first, level0, end, tol, iterations: int, min_trend: int) -> dict:
    rows, n = Y.shape
    index = np.arange(n)[None]
    a = level0.copy()
    b = np.zeros(rows)
    # The first window is wide (a drifting plateau may sink below the band before its end), the
    # next ones follow the fitted plateau.
    width = np.maximum(tol, WIDE * np.abs(a))[:, None] if iterations else tol
    for k in range(iterations + 1):
        band = a[:, None] + b[:, None] * x[None] - (width if k == 0 else tol)
        above = (Y >= band) & (index >= start[:, None])
        # One evaluation back in the band between two below it is a spike, not the plateau.
        above[:, 1:] &= ~(~above[:, :-1] & ~np.c_[above[:, 2:], np.zeros((rows, 1), bool)])
        has_above = above.any(axis=1)
        last = np.where(has_above, n - 1 - above[:, ::-1].argmax(axis=1), start - 1)
        if k == iterations:
            break
        a, b = _line(x[None], Y, (index >= first[:, None]) & (index <= last[:, None]), min_trend, level0)
    left = last < n - 1
    i = np.clip(last, 0, n - 2)
    cross = crossing(x, Y - band, i, 0.0)
    after = index > last[:, None]
    # A corner lies before the first evaluation below the band (where the chord to it crosses the
    # band can lie before the corner, on a coarse grid). A line that meets the plateau only after
    # it is steeper than the drop's start (a drop that gathers pace, as on real runs): no corner
    # to extrapolate to, and the band's crossing is the plateau's end.
    below = x[np.clip(last + 1, 0, n - 1)]
    plateau_points = (index >= first[:, None]) & (index <= last[:, None])
    for k in range(CORNER_REFITS + 1):
        if k:  # the plateau is what lies before its end: evaluations past the corner leave its line
            a, b = _line(x[None], Y, plateau_points & (x[None] < onset[:, None]), min_trend, level0)
        plateau = a[:, None] + b[:, None] * x[None]
        with np.errstate(invalid="ignore", divide="ignore"):
            share = (plateau - Y) / (plateau - end[:, None])
        drop = after & (share >= ONSET_SHARE[0]) & (share <= ONSET_SHARE[1])
        few = drop.sum(axis=1) < 2
        drop[few] = (after & (index <= last[:, None] + 2))[few]
        ad, bd = _line(x[None], Y, drop, 2, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            meet = (ad - a) / (b - bd)
        # The drop cannot start before an evaluation that lies on the plateau's line rather than
        # the drop's (a sudden step followed by a slow fall extrapolates far back).
        on_plateau = plateau_points & (np.abs(Y - plateau) < np.abs(Y - (ad[:, None] + bd[:, None] * x[None])))
        latest = np.where(on_plateau.any(axis=1), x[n - 1 - on_plateau[:, ::-1].argmax(axis=1)], -np.inf)
        meet = np.maximum(meet, latest)
        cornered = np.isfinite(meet) & (bd < b) & (meet <= below)
        onset = np.where(cornered, meet, cross)
    return {"left": left, "onset": onset, "level": a, "trend": b,
            "drop_slope": np.where(np.isfinite(bd), bd, 0.0)}


def threshold_rules(curve: Curve, L: np.ndarray, t1_tol: float, t2_tol: float, t3_tol: float,
                    tail: float) -> dict:
    """The threshold rules on every row of ``L`` (losses at ``curve.step``).

    Returns ``t`` (rows, 3) with NaN for missing boundaries, the final level ``end``, the
    saturation level ``ceiling`` and ``t3_in_tail`` (t3 within the tail window).
    """
    n = L.shape[1]
    x, base, step = curve.log_step, curve.baseline, curve.step

    def cross(i, level):
        return np.expm1(crossing(x, L, i, level))

    near = L <= base * (1 + t1_tol)
    has_t1 = near.any(axis=1)
    i1 = near.argmax(axis=1)
    t1 = np.where(i1 == 0, step[0], cross(i1 - 1, base * (1 + t1_tol)))

    first_tail, end = final_level(curve, L, tail)

    plateau = departure(x, L, i1, base, end, t2_tol * base)
    ended = plateau["left"]
    # Never in the band after t1: it left the baseline between evaluations around t1.
    t2 = np.maximum(np.expm1(plateau["onset"]), t1)
    ceiling = end + t3_tol * (base - end)
    high = L > ceiling[:, None]
    i3 = np.where(high.any(axis=1), n - 1 - high[:, ::-1].argmax(axis=1), 0)
    saturated = i3 < n - 1
    t3 = np.maximum(cross(i3, ceiling), t2)

    t = np.column_stack([t1, t2, t3])
    t[~has_t1] = np.nan
    t[~ended, 1:] = np.nan
    t[~saturated, 2] = np.nan
    return {"t": t, "end": end, "ceiling": ceiling, "t3_in_tail": i3 + 1 >= first_tail,
            "plateau_level": plateau["level"], "plateau_trend": plateau["trend"]}


def rules_on(curve: Curve, t1_tol: float, t2_tol: float, t3_tol: float, tail: float, subject: str = "loss",
             tail_is_missing: bool = False) -> Boundaries:
    """The threshold rules on one curve, with a note for the first boundary missing.

    ``subject`` names the curve in the notes ("loss", "fitted loss"); with ``tail_is_missing``
    a t3 in the last ``tail`` of the run counts as not saturated, else it is kept with a note.
    """
    found = threshold_rules(curve, curve.loss[None], t1_tol, t2_tol, t3_tol, tail)
    t1, t2, t3 = (None if np.isnan(v) else float(v) for v in found["t"][0])
    in_tail = bool(found["t3_in_tail"][0])
    notes = []
    if t1 is None:
        notes.append(f"loss never reached the baseline: lowest {subject} {curve.loss.min():.3g} nats, "
                     f"baseline {curve.baseline:.3g} nats")
    elif t2 is None:
        notes.append(f"no plateau end: {subject} still within {t2_tol:.0%} of the baseline at the last "
                     f"evaluation (step {curve.step[-1]:.0f})")
    elif t3 is None or (in_tail and tail_is_missing):
        notes.append(f"knowledge not saturated: {subject} still above its final level at the last evaluation")
        t3 = None
    elif in_tail:
        notes.append(f"t3 falls in the last {tail:.0%} of the run: the {subject} may still be falling")
    diagnostics = {"final_level": float(found["end"][0]), "t3_level": float(found["ceiling"][0])}
    if t1 is not None and t2 is not None:  # the plateau's line, as a share of B: where it starts, how far it sinks
        level, trend = found["plateau_level"][0], found["plateau_trend"][0]
        start = level + trend * np.log1p(t1)
        diagnostics.update(plateau_level=float(start / curve.baseline),
                           plateau_drift=float(trend * (np.log1p(t2) - np.log1p(t1)) / curve.baseline))
    return Boundaries(t1, t2, t3, notes, diagnostics)


def label_knots(step: np.ndarray, level: np.ndarray, baseline: float, t1_tol: float, t2_tol: float,
                t3_tol: float) -> Boundaries:
    """Name the knots of a fitted piecewise-linear curve with the phase rules.

    ``step`` are the knots (first and last evaluation included) and ``level`` the fitted loss
    there. With the baseline B and the end level E = level[-1]:
    t1 = the first knot with level <= B (1 + t1_tol);
    t2 = the last knot, from t1 on, with level >= B (1 - t2_tol), unless it is the last one;
    t3 = the first knot after t2 from which every level is <= E + t3_tol (B - E), unless
    that is only the last knot (the loss is still falling).
    """
    notes: list[str] = []
    near = np.flatnonzero(level <= baseline * (1 + t1_tol))
    if len(near) == 0:
        notes.append(f"loss never reached the baseline: lowest fitted level {level.min():.3g} nats, "
                     f"baseline {baseline:.3g} nats")
        return Boundaries(None, None, None, notes)
    i1 = near[0]
    above = np.flatnonzero(level[i1:] >= baseline * (1 - t2_tol)) + i1
    i2 = above[-1] if len(above) else i1
    if i2 == len(level) - 1:
        notes.append(f"no plateau end: the fitted loss is still within {t2_tol:.0%} of the baseline at the "
                     f"last evaluation (step {step[-1]:.0f})")
        return Boundaries(float(step[i1]), None, None, notes)
    end = level[-1]
    ceiling = end + t3_tol * (baseline - end)
    high = np.flatnonzero(level[i2:] > ceiling) + i2
    i3 = (high[-1] + 1) if len(high) else i2 + 1
    t3 = None
    if i3 >= len(level) - 1:
        notes.append("knowledge not saturated: the fitted loss is still falling at the last evaluation")
    else:
        t3 = float(step[i3])
    return Boundaries(float(step[i1]), float(step[i2]), t3, notes)
