"""Threshold rules relative to the baseline: the literal definitions of the phases.

With L(t) the population loss and B the baseline (nats):
- t1 = the first step at which L <= B (1 + t1_tol): the marginals are learned;
- t2 = the step after which L stays below B (1 - t2_tol): the plateau ends for good;
- t3 = the step after which L stays below E + t3_tol (B - E), with E the final level (the
  median loss over the last ``tail`` share of the run): knowledge is saturated.
Crossings are interpolated between evaluations, linearly in log(1 + step). When the noise
is large against the bands, the curve is first smoothed with a running median. The rules
run on many curves at once (the bootstrap replicates) as array operations.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import median_filter

from phasefit.curve import Curve, smooth_for_band
from phasefit.detectors.base import Boundaries, Detector


class ThresholdDetector(Detector):
    """Phase boundaries where the loss crosses bands around the baseline and the final level.

    Parameters
    ----------
    t1_tol : relative band above B that counts as "at the baseline" (default 0.05: 5% of B,
        about 0.34 nats at the study's B of 6.8; the approach to B is asymptotic, so t1 needs a
        band, and 5% lies well above the noise of a population mean).
    t2_tol : how far below B the loss must fall, for good, to end the plateau (default 0.02:
        about 2% of the knowledge drop; small, so t2 marks where knowledge starts, within 1%
        of the run of the regime change on the simulator's curves).
    t3_tol : share of the knowledge drop B - E still to go at saturation (default 0.02: on a
        drop straight in log-step, t3 then lies 2% of the drop's log-span before the corner).
    tail : share of the run whose median loss is the final level E (default 0.05).
    smooth : running-median window in evaluations, or "auto": 1 (none) unless the noise
        exceeds a quarter of the narrowest band, then the smallest odd window that brings
        it below (at most 15).
    """

    name = "threshold"

    def __init__(self, t1_tol: float = 0.05, t2_tol: float = 0.02, t3_tol: float = 0.02,
                 tail: float = 0.05, smooth: int | str = "auto"):
        self.t1_tol = t1_tol
        self.t2_tol = t2_tol
        self.t3_tol = t3_tol
        self.tail = tail
        self.smooth = smooth

    def for_replicates(self) -> "ThresholdDetector":
        params = self.get_params()
        params["smooth"] = self.diagnostics_.get("smooth_window", self.smooth)
        return type(self)(**params)

    def fit_replicates(self, curve: Curve, losses: np.ndarray) -> np.ndarray:
        """t1, t2, t3 of every row of ``losses`` (same steps as ``curve``): (rows, 3), NaN: none."""
        window = int(self.diagnostics_.get("smooth_window", 1)) if hasattr(self, "diagnostics_") else 1
        if window > 1:
            losses = median_filter(losses, size=(1, window), mode="nearest")
        found = threshold_rules(curve, losses, self.t1_tol, self.t2_tol, self.t3_tol, self.tail)
        return found["t"]

    def _boundaries(self, curve: Curve) -> Boundaries:
        n = len(curve.loss)
        if n < 3:
            return Boundaries(None, None, None, [f"only {n} evaluation steps: too few to find phases"], {"skipped": True})
        band = min(self.t1_tol, self.t2_tol) * curve.baseline
        smoothed, window = smooth_for_band(curve, band, self.smooth)
        found = rules_on(smoothed, self.t1_tol, self.t2_tol, self.t3_tol, self.tail)
        found.diagnostics["smooth_window"] = window
        return found


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
    return Boundaries(t1, t2, t3, notes, diagnostics)


def _cross(x: np.ndarray, step0: float, L: np.ndarray, i: np.ndarray, level) -> np.ndarray:
    """Steps where each row of L crosses ``level`` between evaluations i and i + 1 (log-step axis)."""
    n = L.shape[1]
    rows = np.arange(L.shape[0])
    i = np.clip(i, 0, n - 2)
    y0, y1 = L[rows, i], L[rows, i + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(y1 != y0, (level - y0) / (y1 - y0), 1.0)
    f = np.clip(np.nan_to_num(f, nan=1.0), 0.0, 1.0)
    return np.expm1(x[i] + f * (x[i + 1] - x[i]))


def threshold_rules(curve: Curve, L: np.ndarray, t1_tol: float, t2_tol: float, t3_tol: float,
                    tail: float) -> dict:
    """The threshold rules on every row of ``L`` (losses at ``curve.step``).

    Returns ``t`` (rows, 3) with NaN for missing boundaries, the final level ``end``, the
    saturation level ``ceiling`` and ``t3_in_tail`` (t3 within the tail window).
    """
    B, n = L.shape
    x, base, step = curve.log_step, curve.baseline, curve.step
    index = np.arange(n)[None]
    near = L <= base * (1 + t1_tol)
    has_t1 = near.any(axis=1)
    i1 = near.argmax(axis=1)
    t1 = np.where(i1 == 0, step[0], _cross(x, step[0], L, i1 - 1, base * (1 + t1_tol)))

    low = base * (1 - t2_tol)
    above = (L >= low) & (index >= i1[:, None])
    has_above = above.any(axis=1)
    last_above = n - 1 - above[:, ::-1].argmax(axis=1)
    ended = ~(has_above & (last_above == n - 1))
    # Never above the low band after t1: it left the baseline between evaluations around t1.
    i2 = np.where(has_above, last_above, i1 - 1)
    t2 = np.where(i2 >= 0, np.maximum(_cross(x, step[0], L, i2, low), t1), t1)

    first_tail = min(int(np.searchsorted(step, step[-1] - tail * curve.run_length)), n - 3)
    end = np.median(L[:, first_tail:], axis=1)
    ceiling = end + t3_tol * (base - end)
    high = L > ceiling[:, None]
    i3 = np.where(high.any(axis=1), n - 1 - high[:, ::-1].argmax(axis=1), 0)
    saturated = i3 < n - 1
    t3 = np.maximum(_cross(x, step[0], L, i3, ceiling), t2)

    t = np.column_stack([t1, t2, t3])
    t[~has_t1] = np.nan
    t[~ended, 1:] = np.nan
    t[~saturated, 2] = np.nan
    return {"t": t, "end": end, "ceiling": ceiling, "t3_in_tail": i3 + 1 >= first_tail}
