"""Population curves: mean loss and accuracy per step, per split and attribute, and overall.

L(t), the curve the phases are read from, is the mean attribute loss of the trained
individuals: the sum of loss over every evaluated train fact at step t divided by their
number (pooled over attributes; where everyone is evaluated this equals the mean over
attributes of the per-attribute means). Held-out individuals give the hallucination curve.
The means themselves are computed in one place, ``logstore.population``.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from logstore.population import curves_from_sums
from logstore.population import population_curves as store_curves
from phasefit.curve import Curve
from phasefit.summary import Summary


def population_curves(source: xr.Dataset | Summary) -> xr.Dataset:
    """Population curves of a run: ``logstore.population_curves`` of a store Dataset, or the
    same means from the sums of its ``Summary`` (no second pass over the records).

    A Dataset with dimensions (step, split, attribute): ``loss`` (nats) and ``accuracy`` per
    attribute, ``mean_loss`` and ``mean_accuracy`` pooled over attributes, and ``count``
    (facts evaluated). Steps where a split has no evaluated fact are NaN.
    """
    if isinstance(source, Summary):
        a = source.attribute
        return curves_from_sums(a["loss_sum"], a["n_correct"], a["n_evaluated"])
    return store_curves(source)


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
