"""Hallucination: held-out individuals, never trained on, against the baseline.

A calibrated model stays at the baseline B on individuals it has never seen; loss above B is
over-confidence. The onset is read by the rule of the plateau's end (``phasefit.rules.departure``),
mirrored: the held-out loss's floor is a line (level and trend, log-step axis) fitted to its
evaluations from the first within tol B of the floor level F on, F being the baseline, or the
held-out loss's lowest level when it never comes down to the baseline (a small model on a
small world already guesses from name tokens it shares with trained individuals); the rise is
what follows the last evaluation not more than tol B above that line; the onset is where the
line of the early rise (10% to 80% of the way to the final level) meets the floor's. Its lag is
onset - t2, both read by the same rule on their two curves, and the confidence gap is the
held-out minus trained mean of top_prob (probability of the top token at the value's first
token) and of entropy (nats) at every evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from phasefit.curve import Curve, largest_window, smooth_for_band
from phasefit.rules import departure, final_level


@dataclass
class HallucinationOnset:
    onset: float | None
    notes: list[str] = field(default_factory=list)
    smooth_window: int = 1


def onset(curve: Curve, tol: float = 0.02, smooth: int | str = "auto", smooth_span: float = 0.1) -> HallucinationOnset:
    """The step after which the held-out loss stays above its floor + tol B; None with a reason.

    ``smooth`` "auto" applies the smallest running median that brings the curve's estimated
    noise below a quarter of the band tol B, but never wider than ``smooth_span`` of the
    evaluations (default 0.1: 3 of a 30-evaluation run), so the dip to the baseline that
    precedes the rise survives on short runs; an integer forces the window.
    """
    if len(curve.loss) < 3:
        return HallucinationOnset(None, ["no held-out evaluations"])
    smoothed, window = smooth_for_band(curve, tol * curve.baseline, smooth,
                                       max_window=largest_window(len(curve.loss), smooth_span))
    value = onsets(smoothed, smoothed.loss[None], tol)[0]
    lowest = float(smoothed.loss.min())
    notes = []
    if lowest > curve.baseline * (1 + tol):
        smoothing = f" after smoothing over {window} evaluations" if window > 1 else ""
        notes.append(f"held-out loss never came down to the baseline (lowest {lowest:.3g} nats{smoothing}, "
                     f"baseline {curve.baseline:.3g}): the onset is measured from its lowest level")
    if np.isfinite(value):
        return HallucinationOnset(float(value), notes, window)
    notes.append(f"no hallucination onset: held-out loss within {tol:.0%} of the baseline (or of its lowest "
                 f"level) at the last evaluation (step {curve.step[-1]:.0f})")
    return HallucinationOnset(None, notes, window)


def onsets(curve: Curve, L: np.ndarray, tol: float, tail: float = 0.05) -> np.ndarray:
    """Onset for every row of ``L`` (held-out losses at ``curve.step``); NaN where none.

    The floor level of a row is max(B, its lowest loss), its final level the median of the last
    ``tail`` of the run; the onset is where the row's rise leaves its floor's line (the rule of
    t2 on -L, ``departure``)."""
    floor = np.maximum(curve.baseline, np.nanmin(L, axis=1))
    band = tol * curve.baseline
    reached = L <= (floor + band)[:, None]
    first = reached.argmax(axis=1)
    _, end = final_level(curve, L, tail)
    found = departure(curve.log_step, -L, first, -floor, -end, band, first=first)
    return np.where(found["left"], np.expm1(found["onset"]), np.nan)


def confidence_gap(individual: xr.Dataset) -> xr.Dataset:
    """Mean loss, top_prob and entropy of the train and held-out splits per step, and the
    held-out minus train gaps; ``individual`` is ``Summary.individual``."""
    split = individual["split"].values
    out = {}
    for name in ("train", "heldout"):
        members = split == name
        n = individual["n_evaluated"].values[:, members].sum(axis=1, dtype=np.float64)
        n[n == 0] = np.nan
        for field_name, var in (("loss", "loss_sum"), ("top_prob", "top_prob_sum"), ("entropy", "entropy_sum")):
            total = individual[var].values[:, members].sum(axis=1, dtype=np.float64)
            out[f"{field_name}_{name}"] = ("step", total / n)
    gap = xr.Dataset(out, coords={"step": individual["step"].values})
    gap["top_prob_gap"] = gap["top_prob_heldout"] - gap["top_prob_train"]
    gap["entropy_gap"] = gap["entropy_heldout"] - gap["entropy_train"]
    return gap
