"""What the report pages draw: small tables reduced in Python from a run's store and its phases.

A page never carries per-fact arrays. ``run_data`` reads a run once through
``phasefit.detect`` (population curves, per-fact acquisition, held-out confidence) plus one
pass over ``loss`` for per-step quantiles across individuals, and keeps only per-step
aggregates, histograms and rank-binned quartiles: a few thousand rows at paper scale
(80k individuals x 6 attributes x 200 evaluations), whatever the population size.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
ACQUISITION_BINS = 40  # log-spaced bins of the per-fact acquisition histogram
RANK_BINS = 30  # log-spaced bins of frequency rank
TRAINING_POINTS = 400  # training-loss bins (log-spaced steps: every early step kept)
SIGNATURES = {"attn_name_to_name": "name -> name (grouping)", "attn_value_to_name": "value -> name (extraction)",
              "attn_sharpness": "sharpness (entropy / log n)"}


@dataclass
class RunData:
    """One run, reduced for drawing. Steps are training steps, losses nats.

    ``phases`` is ``Phases.to_dict()`` (the fields of ``phasefit detect --json``);
    ``conditions`` its short condition names (N, sampling, alpha, ..., seed); ``config`` the
    flattened resolved configuration. Every table is empty when the run has no committed
    evaluation (or could not be read: then ``status`` is "unreadable" and ``problem`` says why).
    """

    name: str
    status: str
    phases: dict = field(default_factory=dict)
    conditions: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    problem: str | None = None
    n_train: int = 0  # trained individuals (the train split)
    baselines: pd.DataFrame = field(default_factory=pd.DataFrame)  # attribute, baseline
    population: pd.DataFrame = field(default_factory=pd.DataFrame)  # step, split, loss, accuracy, q10..q90, facts_known
    attributes: pd.DataFrame = field(default_factory=pd.DataFrame)  # step, split, attribute, loss, accuracy, baseline
    confidence: pd.DataFrame = field(default_factory=pd.DataFrame)  # step, split, loss, top_prob, entropy
    acquisition: pd.DataFrame = field(default_factory=pd.DataFrame)  # attribute, step_lo, step_hi, facts
    by_rank: pd.DataFrame = field(default_factory=pd.DataFrame)  # rank_lo, rank_hi, rank_mid, acquired, quartiles
    acquired_fraction: pd.DataFrame = field(default_factory=pd.DataFrame)  # step, decile, fraction
    attention: pd.DataFrame = field(default_factory=pd.DataFrame)  # step, layer, signature, mean, low, high
    training: pd.DataFrame = field(default_factory=pd.DataFrame)  # step, step_lo, step_hi, loss, loss_min, loss_max, lr
    reference: pd.DataFrame = field(default_factory=pd.DataFrame)  # patched runs: the reference's step, loss, accuracy
    groups: pd.DataFrame = field(default_factory=pd.DataFrame)  # sequential runs: step, group, accuracy, loss

    @property
    def has_data(self) -> bool:
        return not self.population.empty

    @property
    def finetune(self) -> pd.DataFrame:
        """A fine-tuning run's population rows of old (train) and new (finetune) individuals."""
        if not self.phases.get("finetune") or not self.has_data:
            return pd.DataFrame()
        return self.population[self.population["split"].isin(["train", "finetune"])]

    @property
    def never_acquired(self) -> float | None:
        """Share of the train split's facts not acquired by the last evaluation."""
        rows = self.phases.get("acquisition_by_attribute") or []
        facts = sum(r["n_facts"] for r in rows)
        return None if not facts else 1 - sum(r["acquired"] * r["n_facts"] for r in rows) / facts


def run_data(source, name: str | None = None, *, n_boot: int = 200, method: str = "auto") -> RunData:
    """Reduce one run for drawing.

    ``source``: a run folder (or its metrics.zarr), or a Dataset in the store schema
    (``logstore.open_run``, ``phasefit.simulate``). Only committed rows are read, so a run
    still training is drawn as far as it has got. ``n_boot`` and ``method`` go to
    ``phasefit.detect`` (its defaults, so the numbers match ``phasefit detect``).
    """
    from phasefit.analysis import analyse
    from logstore.schema import flatten_config as flatten

    if isinstance(source, (str, os.PathLike)):
        from logstore import open_run

        ds = open_run(source)
    else:
        ds = source
    phases = analyse(ds, method, run=name, n_boot=n_boot)
    data = RunData(name=phases.run, status=phases.status, phases=phases.to_dict(), conditions=dict(phases.conditions),
                   config=flatten(phases.config), n_train=int((ds["split"].values == "train").sum()))
    data.baselines = pd.DataFrame({"attribute": ds["attribute"].values, "baseline": ds["baseline"].values.astype(float)})
    if phases.curves is None or ds.sizes.get("step", 0) == 0:
        return data
    data.population = _population(ds, phases.curves, data.n_train)
    data.attributes = _attributes(phases.curves, data.baselines)
    if phases.gap is not None:
        data.confidence = _confidence(phases.gap)
    if phases.acquisition is not None:
        data.acquisition = acquisition_histogram(phases.acquisition, ds["step"].values)
        data.by_rank = by_rank(phases.acquisition)
        data.acquired_fraction = (phases.acquired_fraction.to_dataframe().reset_index()
                                  .rename(columns={"acquired_fraction": "fraction"}))
    data.attention = attention_table(ds)
    data.training = training_table(ds)
    if phases.reference is not None and phases.reference.curves is not None:
        data.reference = (phases.reference.curves[["mean_loss", "mean_accuracy"]].sel(split="train", drop=True)
                          .to_dataframe().reset_index().rename(columns={"mean_loss": "loss", "mean_accuracy": "accuracy"}))
    if phases.groups is not None:
        data.groups = phases.groups.to_dataframe().reset_index()
    return data


def unreadable(name: str, problem: str) -> RunData:
    """A run whose store cannot be read: listed on the index with the problem, nothing drawn."""
    return RunData(name=name, status="unreadable", problem=problem, phases={"run": name, "notes": [problem]})


def load_runs(runs_dir, *, n_boot: int = 200, method: str = "auto", progress: bool = False) -> list[RunData]:
    """``run_data`` of every run under ``runs_dir`` (or of ``runs_dir`` itself if it is a run).

    A run that cannot be read or analysed is kept, as status "unreadable" with the problem,
    so that the index lists it.
    """
    from logstore import StoreError, find_runs
    from phasefit.runs import is_run

    runs_dir = Path(runs_dir)
    if is_run(runs_dir) or runs_dir.suffix == ".zarr":
        found = {runs_dir.with_suffix("").name if runs_dir.suffix == ".zarr" else runs_dir.name: runs_dir}
    else:
        found = find_runs(runs_dir)
    items = list(found.items())
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="report", unit="run", file=sys.stderr, disable=None)
    out = []
    for name, path in items:
        try:
            out.append(run_data(path, name, n_boot=n_boot, method=method))
        except StoreError as err:
            out.append(unreadable(name, f"unreadable store: {err}"))
        except Exception as err:  # one run's problem must not stop the report of a sweep
            out.append(unreadable(name, f"analysis failed: {type(err).__name__}: {err}"))
    return out


def individual_quantiles(ds: xr.Dataset, quantiles=QUANTILES) -> pd.DataFrame:
    """Per step and split: quantiles across individuals of each individual's mean attribute
    loss (over the attributes evaluated at that step). Columns step, split, q10, q25, ...

    Reads ``loss`` once, chunk by chunk; only a (step, individual) array is kept.
    """
    loss = ds["loss"]
    total = loss.fillna(0).sum("attribute")
    count = loss.notnull().sum("attribute")
    per = np.asarray((total / count.where(count > 0)).values, dtype=np.float32)  # (step, individual)
    split = ds["split"].values
    rows = []
    for name in pd.unique(split):
        with warnings.catch_warnings():  # steps where nobody of the split was evaluated: NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            q = np.nanquantile(per[:, split == name], quantiles, axis=1)
        frame = pd.DataFrame({f"q{round(p * 100)}": q[k] for k, p in enumerate(quantiles)})
        frame.insert(0, "split", name)
        frame.insert(0, "step", ds["step"].values)
        rows.append(frame)
    return pd.concat(rows, ignore_index=True)


def _population(ds: xr.Dataset, curves: xr.Dataset, n_train: int) -> pd.DataFrame:
    frame = (curves[["mean_loss", "mean_accuracy"]].to_dataframe().reset_index()
             .rename(columns={"mean_loss": "loss", "mean_accuracy": "accuracy"}))
    frame = frame.merge(individual_quantiles(ds), on=["step", "split"], how="left")
    n_facts = n_train * ds.sizes["attribute"]
    frame["facts_known"] = np.where(frame["split"] == "train", frame["accuracy"] * n_facts, np.nan)
    return frame


def _attributes(curves: xr.Dataset, baselines: pd.DataFrame) -> pd.DataFrame:
    frame = curves[["loss", "accuracy"]].to_dataframe().reset_index()
    return frame.merge(baselines, on="attribute", how="left")


def _confidence(gap: xr.Dataset) -> pd.DataFrame:
    """Long table of the held-out and trained means of loss, top_prob and entropy."""
    rows = []
    for split in ("train", "heldout"):
        part = pd.DataFrame({"step": gap["step"].values, "split": split})
        for measure in ("loss", "top_prob", "entropy"):
            part[measure] = gap[f"{measure}_{split}"].values
        rows.append(part)
    return pd.concat(rows, ignore_index=True)


def _log_edges(low: float, high: float, n: int) -> np.ndarray:
    low, high = max(float(low), 1.0), max(float(high), 1.0)
    return np.unique(np.round(np.geomspace(low, high * 1.0001, n + 1)))


def acquisition_histogram(acquisition: xr.Dataset, steps: np.ndarray, n_bins: int = ACQUISITION_BINS) -> pd.DataFrame:
    """Facts acquired per log-spaced step bin and attribute (acquired facts only)."""
    positive = steps[steps > 0]
    if not len(positive):
        return pd.DataFrame(columns=["attribute", "step_lo", "step_hi", "facts"])
    edges = _log_edges(positive[0], steps[-1], n_bins)
    if len(edges) < 2:
        edges = np.array([edges[0], edges[0] + 1])
    rows = []
    for attribute in acquisition["attribute"].values:
        values = acquisition["acquisition_step"].sel(attribute=attribute).values
        counts, _ = np.histogram(np.clip(values[np.isfinite(values)], edges[0], edges[-1]), edges)
        rows.append(pd.DataFrame({"attribute": attribute, "step_lo": edges[:-1], "step_hi": edges[1:], "facts": counts}))
    return pd.concat(rows, ignore_index=True)


def by_rank(acquisition: xr.Dataset, n_bins: int = RANK_BINS) -> pd.DataFrame:
    """Per log-spaced frequency-rank bin: facts, share acquired, and the quartiles of the
    acquisition step and of the exposures at acquisition (over the acquired facts)."""
    rank = np.broadcast_to(acquisition["rank"].values[:, None], acquisition["acquisition_step"].shape).ravel()
    frame = pd.DataFrame({"rank": rank, "step": acquisition["acquisition_step"].values.ravel(),
                          "exposures": acquisition["exposures_at_acquisition"].values.ravel()})
    if frame.empty:
        return pd.DataFrame()
    edges = _log_edges(1, frame["rank"].max() + 1, n_bins) - 1  # rank 0 is the first bin's start
    frame["bin"] = np.clip(np.searchsorted(edges, frame["rank"], side="right") - 1, 0, len(edges) - 2)
    grouped = frame.groupby("bin")
    out = pd.DataFrame({"facts": grouped.size(), "acquired": grouped["step"].apply(lambda s: s.notna().mean())})
    for column in ("step", "exposures"):
        quartiles = grouped[column].quantile([0.25, 0.5, 0.75]).unstack()
        for q, label in zip((0.25, 0.5, 0.75), ("q25", "median", "q75")):
            out[f"{column}_{label}"] = quartiles[q]
    out = out.reset_index()
    out["rank_lo"] = edges[out["bin"]]
    out["rank_hi"] = edges[out["bin"] + 1] - 1
    out["rank_mid"] = np.sqrt((out["rank_lo"] + 1) * (out["rank_hi"] + 1))  # geometric centre, as rank + 1
    return out.drop(columns="bin")


def attention_table(ds: xr.Dataset) -> pd.DataFrame:
    """Attention signatures per evaluation step and layer: mean, min and max over heads."""
    rows = []
    for name, label in SIGNATURES.items():
        if name not in ds:
            continue
        values = np.asarray(ds[name].values, dtype=float)  # (step, layer, head): small
        if values.size == 0:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            stats = {"mean": np.nanmean(values, 2), "low": np.nanmin(values, 2), "high": np.nanmax(values, 2)}
        n_steps, n_layers = stats["mean"].shape
        part = pd.DataFrame({"step": np.repeat(ds["step"].values, n_layers), "layer": np.tile(np.arange(n_layers), n_steps),
                             **{k: v.ravel() for k, v in stats.items()}})
        part.insert(2, "signature", label)
        rows.append(part)
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def training_table(ds: xr.Dataset, n_points: int = TRAINING_POINTS) -> pd.DataFrame:
    """Training loss (mean, min, max) and lr in log-spaced bins of training steps: every
    early step kept, later steps pooled, so at most about ``n_points`` rows."""
    if "train_loss" not in ds or ds.sizes.get("train_step", 0) == 0:
        return pd.DataFrame()
    frame = pd.DataFrame({"train_step": ds["train_step"].values, "loss": ds["train_loss"].values.astype(float),
                          "lr": ds["lr"].values.astype(float)})
    edges = _log_edges(1, frame["train_step"].max() + 2, n_points)
    frame["bin"] = np.searchsorted(edges, frame["train_step"] + 1, side="right")
    grouped = frame.groupby("bin")
    return pd.DataFrame({"step": grouped["train_step"].mean(), "step_lo": grouped["train_step"].min(),
                         "step_hi": grouped["train_step"].max(), "loss": grouped["loss"].mean(),
                         "loss_min": grouped["loss"].min(), "loss_max": grouped["loss"].max(),
                         "lr": grouped["lr"].mean()}).reset_index(drop=True)


def condition_label(conditions: dict) -> str:
    """The sampling condition in words: uniform, power law alpha=0.6, warm-up 4000x2, ... (phasefit's)."""
    from phasefit.runs import condition_label as label

    return label(conditions)


def compact(frame: pd.DataFrame, digits: int = 5) -> pd.DataFrame:
    """Round float columns to ``digits`` significant digits: pages carry no false precision."""
    out = frame.copy()
    for column in out.columns:
        if pd.api.types.is_float_dtype(out[column]):
            values = out[column].to_numpy(dtype=float)
            finite = np.isfinite(values) & (values != 0)
            scale = np.zeros_like(values)
            scale[finite] = 10.0 ** (digits - 1 - np.floor(np.log10(np.abs(values[finite]))))
            rounded = values.copy()
            rounded[finite] = np.round(values[finite] * scale[finite]) / scale[finite]
            out[column] = rounded
    return out
