"""Hallucination: held-out individuals, never trained on, against the baseline.

A calibrated model stays at the baseline B on individuals it has never seen; loss above B is
over-confidence. The onset is the step from which the held-out loss stays above
B (1 + tol) for good (interpolated between evaluations, log-step axis), its lag is onset - t2,
and the confidence gap is the held-out minus trained mean of top_prob (probability of the top
token at the value's first token) and of entropy (nats) at every evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from phasefit.curve import Curve, smooth_for_band


@dataclass
class HallucinationOnset:
    onset: float | None
    notes: list[str] = field(default_factory=list)
    smooth_window: int = 1


def onset(curve: Curve, tol: float = 0.02, smooth: int | str = "auto") -> HallucinationOnset:
    """The step after which the held-out loss stays above B (1 + tol); None with a reason."""
    if len(curve.loss) < 3:
        return HallucinationOnset(None, ["no held-out evaluations"])
    smoothed, window = smooth_for_band(curve, tol * curve.baseline, smooth)
    value = onsets(smoothed, smoothed.loss[None], tol)[0]
    if np.isfinite(value):
        return HallucinationOnset(float(value), [], window)
    if not (smoothed.loss <= curve.baseline * (1 + tol)).any():
        return HallucinationOnset(None, [f"held-out loss never came down to the baseline (lowest "
                                         f"{smoothed.loss.min():.3g} nats after smoothing over {window} "
                                         f"evaluations, baseline {curve.baseline:.3g})"], window)
    return HallucinationOnset(None, [f"no hallucination onset: held-out loss within {tol:.0%} of the "
                                     f"baseline at the last evaluation (step {curve.step[-1]:.0f})"], window)


def onsets(curve: Curve, L: np.ndarray, tol: float) -> np.ndarray:
    """Onset for every row of ``L`` (held-out losses at ``curve.step``); NaN where none."""
    n = L.shape[1]
    level = curve.baseline * (1 + tol)
    at_base = L <= level
    last = n - 1 - at_base[:, ::-1].argmax(axis=1)
    found = at_base.any(axis=1) & (last < n - 1)
    i = np.clip(last, 0, n - 2)
    rows = np.arange(len(L))
    y0, y1 = L[rows, i], L[rows, i + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.clip(np.nan_to_num((level - y0) / (y1 - y0), nan=1.0), 0.0, 1.0)
    x = curve.log_step
    return np.where(found, np.expm1(x[i] + f * (x[i + 1] - x[i])), np.nan)


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
