"""Per-fact acquisition: when each fact is learned, after how many exposures, by frequency rank.

A fact (individual x attribute) is acquired at the first evaluation after which it stays
correct: every later evaluation of it is correct. A fact never correct at its last
evaluation (or never evaluated) has no acquisition step (NaN). Where only a subset of the
individuals is evaluated at most steps, a fact's acquisition can only be located on the steps
where it was evaluated; the step reported is that evaluation. Everything is computed with
array operations over all facts at once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from phasefit.summary import Summary


def acquisition(ds: xr.Dataset, summary: Summary, split: str = "train") -> xr.Dataset:
    """Acquisition step and exposures at acquisition of every fact of ``split`` (default the
    train split; "finetune" for the new individuals of a fine-tuning run).

    Returns a Dataset over (individual, attribute) with ``acquisition_step`` (training step,
    NaN: never) and ``exposures_at_acquisition`` (biographies of the individual trained on up
    to that evaluation, NaN: never), and the coordinates ``split``, ``rank`` and ``decile``
    (frequency-rank decile of the train split, 0 = the most frequent tenth; -1 elsewhere).
    """
    members = np.flatnonzero(ds["split"].values == split)
    index = summary.acquisition_index.values[members].astype(np.int64)  # (individual, attribute)
    steps = ds["step"].values.astype(float)
    never = index < 0
    step = np.where(never, np.nan, steps[np.clip(index, 0, None)])
    if "exposures" in ds and len(members):
        exposures = np.asarray(ds["exposures"].isel(individual=members).values, dtype=float)  # (step, individual)
        at = exposures[np.clip(index, 0, None), np.arange(len(members))[:, None]]
        at = np.where(never, np.nan, at)
    else:
        at = np.full(step.shape, np.nan)
    rank = ds["rank"].values[members] if "rank" in ds.coords else np.arange(len(members))
    n_ranked = max(int(rank.max()) + 1, 1) if len(rank) else 1
    decile = np.where(rank >= 0, np.minimum(rank * 10 // n_ranked, 9), -1)
    return xr.Dataset(
        {"acquisition_step": (("individual", "attribute"), step),
         "exposures_at_acquisition": (("individual", "attribute"), at)},
        coords={"individual": ds["individual"].values[members], "attribute": ds["attribute"].values,
                "rank": ("individual", rank), "decile": ("individual", decile)},
    )


def _table(acq: xr.Dataset, by: str) -> pd.DataFrame:
    step = acq["acquisition_step"].values
    exposures = acq["exposures_at_acquisition"].values
    if by == "decile":
        labels = np.broadcast_to(acq["decile"].values[:, None], step.shape)
    else:
        labels = np.broadcast_to(acq["attribute"].values[None, :], step.shape)
    rows = []
    for label in np.unique(labels):  # ten deciles or six attributes, each a vector operation
        inside = labels == label
        s, e = step[inside], exposures[inside]
        acquired = np.isfinite(s)
        q_step = np.quantile(s[acquired], [0.25, 0.5, 0.75]) if acquired.any() else [np.nan] * 3
        q_exp = np.quantile(e[acquired], [0.25, 0.5, 0.75]) if acquired.any() else [np.nan] * 3
        rows.append({by: label.item() if hasattr(label, "item") else label, "n_facts": int(inside.sum()),
                     "acquired": float(acquired.mean()) if inside.any() else np.nan,
                     "step_median": q_step[1], "step_q25": q_step[0], "step_q75": q_step[2],
                     "exposures_median": q_exp[1], "exposures_q25": q_exp[0], "exposures_q75": q_exp[2]})
    return pd.DataFrame(rows)


def by_decile(acq: xr.Dataset) -> pd.DataFrame:
    """Per frequency-rank decile: facts, share ever acquired, quartiles of the acquisition
    step and of the exposures at acquisition (over the acquired facts)."""
    return _table(acq, "decile")


def by_attribute(acq: xr.Dataset) -> pd.DataFrame:
    """The same summary per attribute."""
    return _table(acq, "attribute")


def acquired_fraction(acq: xr.Dataset, steps: np.ndarray) -> xr.DataArray:
    """Share of each decile's facts acquired by each evaluation step: (step, decile)."""
    n_dec = 10
    step = acq["acquisition_step"].values
    decile = np.broadcast_to(acq["decile"].values[:, None], step.shape)
    position = np.searchsorted(steps, step[np.isfinite(step)])  # evaluation index of acquisition
    cell = position * n_dec + decile[np.isfinite(step)]
    counts = np.bincount(cell, minlength=len(steps) * n_dec).reshape(len(steps), n_dec)
    totals = np.bincount(decile.ravel(), minlength=n_dec).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.cumsum(counts, axis=0) / totals
    return xr.DataArray(fraction, dims=("step", "decile"), coords={"step": steps, "decile": np.arange(n_dec)},
                        name="acquired_fraction")
