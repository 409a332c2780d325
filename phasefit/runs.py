"""Reading a run: its folder, its store, and what the store says about the run.

``run_info`` reads a store's attributes once: the configuration, the status, and what the
trainer wrote about the run (``logstore.schema``: the sampling ``stages``, the ``conditions``
under short names and the ``condition_label``). Stores written before the trainer wrote those
three get them derived from the configuration, in one place (the functions under "For stores
without the trainer's attributes" below), which the simulator also uses to describe its runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from logstore.schema import ATTR_CONDITION_LABEL, ATTR_CONDITIONS, ATTR_CONFIG, ATTR_STAGES, STORE_NAME, json_attribute
from logstore.schema import flatten_config as flatten


def is_run(path: Path) -> bool:
    return (path / STORE_NAME).is_dir()


def run_folder(path: str | Path) -> Path:
    """A run's folder, given the folder or its metrics.zarr."""
    path = Path(path)
    return path.parent if path.name == STORE_NAME else path


def run_name(path: str | Path) -> str:
    """A run's name from its folder or its metrics.zarr: the folder's name."""
    return run_folder(path).name


def open_run(path: str | Path) -> xr.Dataset:
    """A run's store as a lazy Dataset of its committed rows (``logstore.open_run``)."""
    from logstore import open_run as logstore_open_run

    return logstore_open_run(path)


def run_config(ds: xr.Dataset) -> dict:
    """The run's resolved configuration (the store attribute ``config``), {} if absent."""
    config = json_attribute(ds.attrs, ATTR_CONFIG, {})
    return config if isinstance(config, dict) else {}


def run_length(ds: xr.Dataset) -> float | None:
    """The run's planned number of training steps (its config's train.steps; None if unknown)."""
    return planned_steps(run_config(ds))


def planned_steps(config: dict) -> float | None:
    steps = (config.get("train") or {}).get("steps")
    return float(steps) if steps else None


@dataclass(frozen=True)
class RunInfo:
    """What a run's store says about the run, read once (``run_info``)."""

    name: str
    status: str  # complete | running | failed
    config: dict = field(default_factory=dict)  # the resolved configuration
    conditions: dict = field(default_factory=dict)  # N, sampling, alpha, lr, ..., seed
    condition_label: str = "uniform"  # the sampling condition in words
    stages: list = field(default_factory=list)  # the sampling schedule: {start, end, label, ranks}
    n_steps: float | None = None  # planned training steps

    @property
    def init_from(self) -> str | None:
        """The trained model the run starts from (train.init_from), if any."""
        return (self.config.get("train") or {}).get("init_from") or None


def run_info(ds: xr.Dataset, name: str | None = None) -> RunInfo:
    """Read a store Dataset's attributes. ``name`` defaults to the run's folder (for a Dataset
    of ``logstore.open_run``), else its config's ``name``."""
    config = run_config(ds)
    source = ds.encoding.get("source")  # the store's path, for a Dataset of logstore.open_run
    name = name or (run_name(source) if source else config.get("name")) or "run"
    conds = json_attribute(ds.attrs, ATTR_CONDITIONS, None)
    if not isinstance(conds, dict):
        conds = conditions(config)
    raw = ds.attrs.get(ATTR_CONDITION_LABEL)
    label = json_attribute(ds.attrs, ATTR_CONDITION_LABEL, raw)  # a plain string, or one written as JSON
    stages = json_attribute(ds.attrs, ATTR_STAGES, None)
    if not isinstance(stages, list):
        n_train = int((ds["split"].values == "train").sum()) if "split" in ds.coords else 0
        stages = stages_from_config(config, n_train)
    return RunInfo(name=name, status=str(ds.attrs.get("status", "complete")), config=config, conditions=conds,
                   condition_label=str(label) if label else condition_label(conds), stages=stages,
                   n_steps=planned_steps(config))


# ----------------------------------------------------------------------------- For stores without the trainer's attributes
# Frozen: the trainer writes stages, conditions and condition_label itself; these derive them
# from the configuration as it did when they were written, for stores that lack them.

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


def condition_label(conditions: dict) -> str:
    """The sampling condition in words, from the short-name conditions: uniform, power law
    alpha=0.7, warm-up 4000x2, celebrities 100x10, fine-tune 20 new, replay 0.25, sequential
    (the kind's word alone when its parameters are unknown)."""
    get = conditions.get
    kind = get("sampling", "uniform")
    if kind == "power_law":
        return "power law" + (f" alpha={get('alpha'):g}" if get("alpha") is not None else "")
    if kind == "warmup":
        return "warm-up" + (f" {get('warmup')}x{get('warmup_epochs', 1):g}" if get("warmup") is not None else "")
    if kind == "celebrities":
        known = get("celebrities") is not None
        return "celebrities" + (f" {get('celebrities')}x{get('celebrity_weight', 1):g}" if known else "")
    if kind == "finetune":
        known = get("n_finetune") is not None
        return "fine-tune" + (f" {get('n_finetune')} new, replay {get('replay', 0):g}" if known else "")
    return str(kind)


def stages_from_config(config: dict, n_train: int) -> list[dict]:
    """The sampling schedule's stages as the trainer builds them (``trainer.sampling``), with
    the train-split ranks each samples ([lowest, highest]; None outside the train split)."""
    s, train = config.get("sampling") or {}, config.get("train") or {}
    steps, kind = int(train.get("steps") or 0), s.get("kind", "uniform")
    everyone = [0, n_train - 1] if n_train else None

    def stage(start, end, label, ranks):
        return {"start": int(start), "end": int(end), "label": label, "ranks": ranks}

    if steps <= 0:
        return []
    if kind == "power_law":
        return [stage(0, steps, f"power law alpha={s.get('alpha', 0.0):g}", everyone)]
    if kind == "celebrities":
        return [stage(0, steps, f"{s.get('celebrities', 0)} celebrities x{s.get('celebrity_weight', 1.0):g}", everyone)]
    if kind == "warmup":
        k = int(s.get("warmup_individuals", 0))
        warm = min(steps, math.ceil(s.get("warmup_epochs", 1.0) * k / int(train.get("batch_size") or 1)))
        first = [stage(0, warm, f"warm-up on {k}", [0, k - 1] if k else None)] if warm > 0 else []
        return first + ([stage(warm, steps, "uniform", everyone)] if warm < steps else [])
    if kind == "sequential":
        n_groups = int(s.get("n_groups", 1))
        groups = np.array_split(np.arange(n_train), n_groups)
        visits = n_groups * int(s.get("n_repeats", 1))
        bounds = np.linspace(0, steps, visits + 1).round().astype(int)
        return [stage(bounds[v], bounds[v + 1], f"group {v % n_groups}",
                      [int(groups[v % n_groups][0]), int(groups[v % n_groups][-1])] if len(groups[v % n_groups]) else None)
                for v in range(visits) if bounds[v + 1] > bounds[v]]
    if kind == "finetune":
        return [stage(0, steps, f"fine-tune, replay {s.get('replay_weight', 0.0):g}", None)]
    return [stage(0, steps, "uniform", everyone)]


def trainer_attributes(config: dict, n_train: int) -> dict:
    """The store attributes the trainer writes (stages, conditions, condition_label), as JSON
    strings where the schema stores JSON, derived from the configuration."""
    conds = conditions(config)
    return {ATTR_STAGES: json.dumps(stages_from_config(config, n_train)),
            ATTR_CONDITIONS: json.dumps(conds, sort_keys=True, default=str),
            ATTR_CONDITION_LABEL: condition_label(conds)}


# ----------------------------------------------------------------------------- tables

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
