"""Population curves: mean loss and accuracy over evaluated facts, per step, split and attribute.

``population_curves`` reduces a store chunk by chunk; ``curves_from_sums`` turns sums over
evaluated facts into the means, and is the one place those means are computed (phasefit
calls it on the sums of its own single pass over a run).
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from logstore.schema import SPLITS

_STATS = ("loss_sum", "correct_sum", "count")


def _chunk_sums(loss: np.ndarray, correct: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Sums over one chunk's individuals, by split: (steps, 1, stat, split, attribute).

    loss and correct (NaN where not evaluated) are (steps, individuals, attributes); codes
    gives each individual's split as an index into SPLITS (-1: none). Each sum is one
    batched matrix product, splits x individuals by individuals x attributes (numpy's
    reductions along a middle axis this short are several times slower). Loss sums in
    float64; counts in float32 are exact (below 2**24).
    """
    members = (np.arange(len(SPLITS))[:, None] == codes[None, :]).astype(np.float32)
    evaluated = ~np.isnan(loss)
    sums = [
        np.matmul(members.astype(np.float64), np.where(evaluated, loss.astype(np.float64), 0.0)),
        np.matmul(members, ((correct == 1) & evaluated).astype(np.float32)),
        np.matmul(members, evaluated.astype(np.float32)),
    ]
    return np.stack(sums, axis=1, dtype=np.float64)[:, None]  # (step, 1, stat, split, attribute)


def population_curves(ds: xr.Dataset, *, compute: bool = True) -> xr.Dataset:
    """Mean loss (nats) and accuracy over the facts evaluated at each step.

    ``ds`` is what ``open_run`` returns (or a selection of it along step or individual).
    The result has dimensions (step, split, attribute); see ``curves_from_sums`` for its
    variables. Each chunk of loss and correct is reduced where it is read, with dask, so the
    dense arrays are never loaded whole; ``compute=False`` returns the result lazy.
    """
    loss = ds.loss.transpose("step", "individual", "attribute").data
    correct = ds.correct.transpose("step", "individual", "attribute").data
    if not isinstance(loss, da.Array):  # a loaded Dataset: one chunk
        loss, correct = da.from_array(loss, chunks=-1), da.from_array(correct, chunks=-1)
    codes = pd.Index(SPLITS).get_indexer(ds.split.values)  # -1 (no split) for anything else
    codes = da.from_array(codes, chunks=(loss.chunks[1],))
    sums = da.blockwise(
        _chunk_sums,
        "sjxka",
        loss,
        "sja",
        correct,
        "sja",
        codes,
        "j",
        new_axes={"x": len(_STATS), "k": len(SPLITS)},
        adjust_chunks={"j": 1},
        dtype=np.float64,
        meta=np.empty((0,) * 5, np.float64),
    ).sum(axis=1)
    totals = xr.DataArray(
        sums,
        dims=("step", "stat", "split", "attribute"),
        coords={"step": ds.step, "stat": list(_STATS), "split": list(SPLITS), "attribute": ds.attribute},
    )
    out = curves_from_sums(*(totals.sel(stat=s, drop=True) for s in _STATS))
    return out.compute() if compute else out


def curves_from_sums(loss_sum: xr.DataArray, correct_sum: xr.DataArray, count: xr.DataArray) -> xr.Dataset:
    """Population curves from sums over the evaluated facts, each (step, split, attribute).

    Returns ``loss`` (nats) and ``accuracy`` (0..1) per attribute, ``mean_loss`` and
    ``mean_accuracy`` pooled over the attributes (sum over every evaluated fact / their
    number; where everyone is evaluated, the mean of the per-attribute means), and ``count``
    (facts evaluated). Means are NaN where no fact was evaluated.
    """
    evaluated = count.where(count > 0)  # NaN, not a 0/0 warning, where none were evaluated
    pooled = count.sum("attribute")
    pooled = pooled.where(pooled > 0)
    return xr.Dataset(
        {
            "loss": (loss_sum / evaluated).assign_attrs(long_name="mean loss over evaluated facts", units="nats"),
            "accuracy": (correct_sum / evaluated).assign_attrs(long_name="share of evaluated facts correct"),
            "mean_loss": (loss_sum.sum("attribute") / pooled).assign_attrs(
                long_name="mean loss over evaluated facts of every attribute", units="nats"
            ),
            "mean_accuracy": (correct_sum.sum("attribute") / pooled).assign_attrs(
                long_name="share of evaluated facts of every attribute correct"
            ),
            "count": count.astype(np.int64).assign_attrs(long_name="facts evaluated"),
        }
    ).transpose("step", "split", "attribute")
