"""Threshold rules relative to the baseline and the run's own plateau: the definitions of the phases.

The rules themselves (``phasefit.rules``) applied to the empirical curve. When the noise is
large against the bands, the curve is first smoothed with a running median. The rules run on
many curves at once (the bootstrap replicates) as array operations.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import median_filter

from phasefit.curve import Curve, smooth_for_band
from phasefit.detectors.base import Detector
from phasefit.rules import Boundaries, rules_on, threshold_rules


class ThresholdDetector(Detector):
    """Phase boundaries where the loss crosses bands around the baseline and the final level.

    Parameters (the defaults and why: docs/phasefit.md, "Defaults of the thresholds")
    ----------
    t1_tol : relative band above B that counts as "at the baseline" (default 0.05).
    t2_tol : how far below its own plateau (level and trend), as a share of B, the loss must
        fall for good to have left it (default 0.02); t2 is where the drop's line meets the
        plateau's (``phasefit.rules.departure``).
    t3_tol : share of the knowledge drop B - E still to go at saturation (default 0.02).
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
        curve, losses = curve.reduced(), curve.reduced_losses(losses)  # the cells fit() saw
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
