"""One pass over a run's evaluation records: every sum the analyses need, block by block.

A store at paper scale holds loss, correct, top_prob and entropy for 80k individuals x 6
attributes x 200 steps (about 1.3 GB in memory); ``summarise`` reads it once, in blocks of
evaluation steps (aligned with the dask chunks of a lazy store, the next block read while the
current one is reduced), and keeps:

- per (step, individual): sums over the evaluated attributes of loss, correct, top_prob and
  entropy, and the number of evaluated attributes: the bootstrap over individuals resamples
  these;
- per (step, split, attribute): sums over the evaluated individuals: the population curves;
- per fact (individual, attribute): the index of the evaluation from which the fact stays
  correct (-1 if it never does), found by a running scan over blocks, with no loop over facts.

A fact not evaluated at a step has loss NaN; its other fields are ignored there.

From the sums, the population curves (``population_curves``) and the curve the phases are
read from (``split_curve``): L(t), the mean attribute loss of the trained individuals, is the
sum of loss over every evaluated train fact at step t divided by their number (pooled over
attributes; where everyone is evaluated this equals the mean over attributes of the
per-attribute means). Held-out individuals give the hallucination curve. The means
themselves are computed in one place, ``logstore.population``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import xarray as xr

from logstore.population import curves_from_sums
from logstore.population import population_curves as store_curves
from phasefit.curve import Curve
from phasefit.runs import run_length

FACT_VARIABLES = ("loss", "correct", "top_prob", "entropy")
BLOCK_ELEMENTS = 1 << 22  # facts x steps per block when the dataset is in memory


@dataclass
class Summary:
    """Reductions of one run's records (see the module docstring)."""

    individual: xr.Dataset  # (step, individual): loss_sum, n_evaluated, n_correct, top_prob_sum, entropy_sum
    attribute: xr.Dataset  # (step, split, attribute): loss_sum, n_evaluated, n_correct
    acquisition_index: xr.DataArray  # (individual, attribute) int16, -1: never acquired


def _blocks(ds: xr.Dataset, n_steps: int) -> list[tuple[int, int]]:
    chunks = ds["loss"].chunks
    if chunks is not None:  # a lazy store: follow its chunks along step
        edges = np.cumsum((0,) + tuple(chunks[0]))
        # merge small chunks so that a block holds about BLOCK_ELEMENTS facts x steps
        per_step = int(np.prod(ds["loss"].shape[1:]))
        size = max(BLOCK_ELEMENTS // max(per_step, 1), 1)
        merged = [0]
        for e in edges[1:]:
            if e - merged[-1] >= size or e == edges[-1]:
                merged.append(int(e))
        return list(zip(merged[:-1], merged[1:]))
    per_step = int(np.prod(ds["loss"].shape[1:]))
    size = max(BLOCK_ELEMENTS // max(per_step, 1), 1)
    return [(k, min(k + size, n_steps)) for k in range(0, n_steps, size)]


def _load(ds: xr.Dataset, names: tuple[str, ...], k0: int, k1: int) -> dict[str, np.ndarray]:
    arrays = [ds[n].data[k0:k1] for n in names]
    if any(hasattr(a, "dask") for a in arrays):
        import dask

        arrays = dask.compute(*arrays, scheduler="threads")
    return {n: np.asarray(a) for n, a in zip(names, arrays)}


def _index(mask: np.ndarray):
    """A slice when the selected individuals are contiguous (no copy), else an index array."""
    where = np.flatnonzero(mask)
    if len(where) and where[-1] - where[0] + 1 == len(where):
        return slice(int(where[0]), int(where[-1]) + 1)
    return where


def summarise(ds: xr.Dataset) -> Summary:
    """Reduce a run's per-fact records (store schema) in one pass; see ``Summary``."""
    n_t, n_i, n_a = (ds.sizes[d] for d in ("step", "individual", "attribute"))
    names = tuple(n for n in FACT_VARIABLES if n in ds)
    splits = [s for s in ("train", "heldout", "finetune") if (ds["split"].values == s).any()]
    select = {s: _index(ds["split"].values == s) for s in splits}

    ind = {k: np.zeros((n_t, n_i), dtype=np.float32) for k in ("loss_sum", "top_prob_sum", "entropy_sum")}
    ind["n_evaluated"] = np.zeros((n_t, n_i), dtype=np.int8)
    ind["n_correct"] = np.zeros((n_t, n_i), dtype=np.int8)
    att = {"loss_sum": np.zeros((n_t, len(splits), n_a)),
           "n_evaluated": np.zeros((n_t, len(splits), n_a), dtype=np.int64),
           "n_correct": np.zeros((n_t, len(splits), n_a), dtype=np.int64)}
    acquired = np.full((n_i, n_a), -1, dtype=np.int16)

    blocks = _blocks(ds, n_t)
    with ThreadPoolExecutor(max_workers=1) as pool:  # read block k + 1 while reducing block k
        pending = pool.submit(_load, ds, names, *blocks[0]) if blocks else None
        for j, (k0, k1) in enumerate(blocks):
            data = pending.result()
            if j + 1 < len(blocks):
                pending = pool.submit(_load, ds, names, *blocks[j + 1])
            _reduce_block(data, k0, k1, ind, att, select, splits, acquired)

    coords = {"step": ds["step"].values, "individual": ds["individual"].values,
              "split": ("individual", ds["split"].values)}
    if "rank" in ds.coords:
        coords["rank"] = ("individual", ds["rank"].values)
    individual = xr.Dataset({k: (("step", "individual"), v) for k, v in ind.items()}, coords=coords)
    attribute = xr.Dataset({k: (("step", "split", "attribute"), v) for k, v in att.items()},
                           coords={"step": ds["step"].values, "split": splits, "attribute": ds["attribute"].values})
    acquisition = xr.DataArray(acquired, dims=("individual", "attribute"),
                               coords={"individual": ds["individual"].values, "attribute": ds["attribute"].values})
    return Summary(individual, attribute, acquisition)


def _reduce_block(data, k0, k1, ind, att, select, splits, acquired) -> None:
    # Sums along individuals or attributes use einsum: one pass in C, and unlike a stack of
    # small BLAS products it does not stall when other work holds the cores.
    loss = data["loss"]
    evaluated = ~np.isnan(loss)
    correct = data.get("correct")
    if correct is None:
        correct = np.zeros_like(evaluated)
    elif correct.dtype == np.bool_:
        correct = correct & evaluated
    else:  # the readers' float form: 1.0 correct, 0.0 wrong, NaN not evaluated
        correct = (correct > 0.5) & evaluated
    loss0 = np.where(evaluated, loss, np.float32(0))
    ind["loss_sum"][k0:k1] = np.einsum("tia->ti", loss0)
    ind["n_evaluated"][k0:k1] = np.einsum("tia->ti", evaluated.view(np.uint8))
    ind["n_correct"][k0:k1] = np.einsum("tia->ti", correct.view(np.uint8))
    for name in ("top_prob", "entropy"):
        if name in data:
            ind[f"{name}_sum"][k0:k1] = np.einsum("tia->ti", np.where(evaluated, data[name], np.float32(0)))
    for s, split in enumerate(splits):
        sel = select[split]
        att["loss_sum"][k0:k1, s] = np.einsum("tia->ta", loss0[:, sel], dtype=np.float64)
        att["n_evaluated"][k0:k1, s] = np.einsum("tia->ta", evaluated[:, sel].view(np.uint8), dtype=np.int64)
        att["n_correct"][k0:k1, s] = np.einsum("tia->ta", correct[:, sel].view(np.uint8), dtype=np.int64)
    _scan_acquisition(evaluated & ~correct, correct, k0, acquired)


def _scan_acquisition(bad: np.ndarray, good: np.ndarray, k0: int, acquired: np.ndarray) -> None:
    """Update, in place, the first evaluation after the last incorrect one at which each fact
    is correct. A block with an incorrect evaluation resets the fact to the first correct one
    after it; a block without keeps an earlier value. Indices are found as maxima of small
    integers (bool x position), several times faster than argmax along the step axis."""
    n = bad.shape[0]
    position = np.arange(1, n + 1, dtype=np.int16)[:, None, None]  # 1..n
    last_bad = (bad * position).max(axis=0)  # 0: no incorrect evaluation in the block
    after = good & (position > last_bad[None])
    earliest = (after * (n + 1 - position)).max(axis=0)  # n - index of the first such step; 0: none
    first = np.where(earliest > 0, k0 + n - earliest, -1).astype(np.int16)
    np.copyto(acquired, first, where=(last_bad > 0) | (acquired < 0))


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
    n_steps = run_length(ds)
    splits = list(curves["split"].values)
    if split not in splits:
        return Curve(np.array([]), np.array([]), baseline, np.array([]), n_steps)
    k = splits.index(split)
    return Curve.clean(curves["step"].values, curves["mean_loss"].values[:, k], baseline,
                       curves["mean_accuracy"].values[:, k], n_steps)


def chance_accuracy(ds: xr.Dataset) -> float | None:
    """The no-knowledge accuracy (chance level), the mean over attributes as the curve's
    accuracy is; None where the store does not record it (one written before it was)."""
    values = np.asarray(ds["chance_accuracy"].values, dtype=float) if "chance_accuracy" in ds else np.array([np.nan])
    return float(values.mean()) if np.isfinite(values).all() else None
