"""Finding, opening and describing runs: run folders, their stores and their conditions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from logstore.runs import flatten_config as flatten


STORE = "metrics.zarr"
# Short names for the conditions shown in tables.
SHORT = {"world.n_individuals": "N", "sampling.kind": "sampling", "sampling.alpha": "alpha",
         "sampling.warmup_individuals": "warmup", "sampling.warmup_epochs": "warmup_epochs",
         "sampling.celebrities": "celebrities", "sampling.celebrity_weight": "celebrity_weight",
         "train.lr": "lr", "train.steps": "steps", "train.batch_size": "batch", "model.preset": "model",
         "train.weight_decay": "wd", "world.n_finetune": "n_finetune", "sampling.replay_weight": "replay",
         "sampling.n_groups": "groups", "sampling.n_repeats": "repeats",
         "patch.reference_step": "patterns_from", "patch.start": "patch_start"}
# The conditions that only describe runs of one sampling kind, or patched runs.
OF_KIND = {"power_law": ("alpha",), "celebrities": ("celebrities", "celebrity_weight"),
           "warmup": ("warmup", "warmup_epochs"), "sequential": ("groups", "repeats"), "finetune": ("replay",)}
OF_PATCHING = ("patterns_from", "patch_start")


def is_run(path: Path) -> bool:
    return (path / STORE).is_dir()


def run_folder(path: str | Path) -> Path:
    """A run's folder, given the folder or its metrics.zarr."""
    path = Path(path)
    return path.parent if path.name == STORE else path


def run_name(path: str | Path) -> str:
    """A run's name from its folder or its metrics.zarr: the folder's name."""
    return run_folder(path).name


def open_run(path: str | Path) -> xr.Dataset:
    """A run's store as a lazy Dataset of its committed rows (``logstore.open_run``)."""
    from logstore import open_run as logstore_open_run

    return logstore_open_run(path)


def run_config(ds: xr.Dataset) -> dict:
    """The run's resolved configuration (the store attribute ``config``), {} if absent."""
    raw = ds.attrs.get("config", "{}")
    if isinstance(raw, dict):
        return raw
    try:
        return json.loads(raw) or {}
    except (TypeError, ValueError):
        return {}


def conditions(config: dict) -> dict:
    """The conditions of a run under short names (N, sampling, alpha, lr, steps, ..., seed)."""
    return named_conditions(flatten(config))


def named_conditions(flat: dict) -> dict:
    """``conditions`` of a flattened config ({"world.n_individuals": 400, ...})."""
    out = {short: flat[key] for key, short in SHORT.items() if key in flat}
    kind = flat.get("sampling.kind", "uniform")
    # Parameters of other sampling kinds (and of patching, in an unpatched run) do not describe it.
    unused = [k for other, keys in OF_KIND.items() if other != kind for k in keys]
    if not flat.get("patch.reference"):
        unused += OF_PATCHING
    for key in unused:
        out.pop(key, None)
    if "seed" in flat:
        out["seed"] = flat["seed"]
    return out


def varying(all_conditions: list[dict]) -> list[str]:
    """Condition names whose values differ between runs (for the table's conditions column)."""
    keys = sorted({k for c in all_conditions for k in c}, key=lambda k: list(SHORT.values()).index(k)
                  if k in SHORT.values() else 99)
    return [k for k in keys if len({json.dumps(c.get(k)) for c in all_conditions}) > 1]


def describe(cond: dict, keys: list[str]) -> str:
    def show(v):
        return f"{v:g}" if isinstance(v, float) and np.isfinite(v) else str(v)

    return " ".join(f"{k}={show(cond[k])}" for k in keys if k in cond)


def listing(runs_dir: str | Path) -> pd.DataFrame:
    """``logstore.list_runs`` for people (``phasefit ls``): its condition columns (the config
    keys that differ between the runs, and the study's main ones) in one ``conditions`` column,
    named as in detect's table (N, sampling, alpha, ...; other keys by their config name), and
    unreadable runs' ``problem`` last, where its long messages widen no other column."""
    from logstore import list_runs

    table = list_runs(runs_dir)
    keys = [c for c in table.columns if c not in ("run", "status", "steps", "last_step", "problem")]
    if table.empty or not keys:
        return table
    column = []
    for row in table[keys].to_dict("records"):
        flat = {k: v for k, v in row.items() if not pd.isna(v)}
        named = named_conditions(flat)
        others = sorted(k for k in flat if k not in SHORT and k != "seed")
        column.append(" ".join(filter(None, (describe(named, list(named)), describe(flat, others)))))
    table = table.drop(columns=keys).assign(conditions=column)
    return table[[c for c in table.columns if c != "problem"] + (["problem"] if "problem" in table else [])]
