"""Population curves: mean loss and accuracy per step, per split and attribute, and overall.

L(t), the curve the phases are read from, is the mean attribute loss of the trained
individuals: the sum of loss over every evaluated train fact at step t divided by their
number (pooled over attributes; where everyone is evaluated this equals the mean over
attributes of the per-attribute means). Held-out individuals give the hallucination curve.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from phasefit.curve import Curve
from phasefit.summary import Summary, summarise


def population_curves(source: xr.Dataset | Summary) -> xr.Dataset:
    """Population curves of a run (store Dataset or its ``Summary``).

    Returns a Dataset with dimensions (step, split, attribute):
    ``loss`` (nats) and ``accuracy`` per attribute, ``mean_loss`` and ``mean_accuracy``
    pooled over attributes, and ``n_evaluated`` (facts averaged). Steps where a split has no
    evaluated fact are NaN.
    """
    summary = source if isinstance(source, Summary) else summarise(source)
    a = summary.attribute
    n = a["n_evaluated"].values.astype(float)
    n[n == 0] = np.nan
    n_all = np.nansum(n, axis=2)
    n_all[n_all == 0] = np.nan
    loss, correct = a["loss_sum"].values, a["n_correct"].values
    dims3, dims2 = ("step", "split", "attribute"), ("step", "split")
    return xr.Dataset(
        {"loss": (dims3, loss / n, {"units": "nats"}),
         "accuracy": (dims3, correct / n),
         "mean_loss": (dims2, loss.sum(axis=2) / n_all, {"units": "nats"}),
         "mean_accuracy": (dims2, correct.sum(axis=2) / n_all),
         "n_evaluated": a["n_evaluated"]},
        coords=a.coords)


def split_curve(ds: xr.Dataset, curves: xr.Dataset, split: str = "train") -> Curve:
    """The curve the phases are read from: mean loss of ``split`` with the mean baseline."""
    baseline = float(np.mean(np.asarray(ds["baseline"].values, dtype=float)))
    config_steps = run_length(ds)
    splits = list(curves["split"].values)
    if split not in splits:
        return Curve(np.array([]), np.array([]), baseline, np.array([]), config_steps)
    k = splits.index(split)
    return Curve.clean(curves["step"].values, curves["mean_loss"].values[:, k], baseline,
                       curves["mean_accuracy"].values[:, k], config_steps)


def run_length(ds: xr.Dataset) -> float | None:
    """The run's planned number of training steps, from its config (None if unknown)."""
    import json

    try:
        steps = json.loads(ds.attrs.get("config", "{}")).get("train", {}).get("steps")
    except (TypeError, ValueError):
        steps = None
    return float(steps) if steps else None
