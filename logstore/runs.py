"""Many runs at once: ``open_runs`` (an xarray DataTree) and ``list_runs`` (a table).

A run is a directory holding metrics.zarr (or a store directory named *.zarr). Runs are
found anywhere under the folder given, so sweeps nested in sub-folders are found too; a
run's name is its path relative to that folder. Its conditions are the keys of its resolved
configuration, flattened with dots ("world.n_individuals", "sampling.alpha", "seed").
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from logstore.checks import committed_rows, load_metadata
from logstore.chunks import ArrayReader
from logstore.durable import writer_busy
from logstore.reader import open_many
from logstore.schema import STORE_NAME, StoreError, flatten_config

# Conditions list_runs always shows when a run has them (the study's main axes).
MAIN_CONDITIONS = ("world.n_individuals", "sampling.kind", "sampling.alpha", "seed")


def find_runs(runs_dir: str | os.PathLike) -> dict[str, Path]:
    """Run name -> run path, for every run under ``runs_dir`` (sorted by name). Symbolic links
    to folders are followed (a folder of links to runs of several sweeps is a comparison),
    each folder once."""
    top = Path(runs_dir)
    if not top.is_dir():
        raise NotADirectoryError(f"{top}: not a directory")
    found, seen = {}, {top.resolve()}
    for dirpath, dirnames, _ in os.walk(top, followlinks=True):
        here = Path(dirpath)
        if STORE_NAME in dirnames or here.suffix == ".zarr":
            run = here if STORE_NAME in dirnames else here.with_suffix("")
            found[top.name if here == top else run.relative_to(top).as_posix()] = here
            dirnames.clear()  # never walk inside a run (its chunks are many small files)
        else:
            # hidden folders, checkpoints, and stores still being created are not runs
            kept = []
            for d in sorted(dirnames):  # sorted: which of two links to one folder names it is reproducible
                real = (here / d).resolve()
                if not d.startswith(".") and d != "checkpoints" and ".zarr." not in d and real not in seen:
                    kept.append(d)
                    seen.add(real)
            dirnames[:] = kept
    return dict(sorted(found.items()))


def run_conditions(attrs: dict, root: Path) -> dict:
    """The run's flattened configuration, from its store's ``config`` attribute."""
    try:
        return flatten_config(attrs.get("config") or {})
    except (ValueError, AttributeError) as err:
        raise StoreError(f"{root}: attribute 'config' is not JSON of a mapping ({err})") from err


def open_runs(runs_dir: str | os.PathLike) -> xr.DataTree:
    """Every run under ``runs_dir`` as a DataTree: one node per run (see ``open_run``).

    Each node's attributes are the run's store attributes plus its conditions (flattened
    config keys). Runs that cannot be opened are skipped with a warning naming them.
    """
    runs = find_runs(runs_dir)
    nodes = {}
    for (name, path), ds in zip(runs.items(), open_many(list(runs.values()))):
        try:
            if isinstance(ds, StoreError):
                raise ds
            ds.attrs.update(run_conditions(ds.attrs, path))
        except StoreError as err:
            warnings.warn(f"skipping run {name}: {err}", stacklevel=2)
            continue
        nodes[name] = ds
    return xr.DataTree.from_dict(nodes, name=Path(runs_dir).name)


def list_runs(runs_dir: str | os.PathLike, conditions: str | list[str] = "varying") -> pd.DataFrame:
    """One row per run: run, status, steps (committed evaluations), last_step, conditions.

    ``status`` is the store's (running, complete, failed), or "stale" for a running store that
    no process is writing (its writer was killed before it could close it: resume or restart
    it), or "unreadable".

    ``conditions``: "varying" (default) shows the conditions that differ between the
    runs plus the study's main ones (MAIN_CONDITIONS), "all" every config key, or a list of
    keys. Runs that cannot be read are listed with status "unreadable" and a ``problem``.
    """
    rows = []
    for name, path in find_runs(runs_dir).items():
        try:
            rows.append({"run": name, **_summary(path)})
        except StoreError as err:
            rows.append({"run": name, "status": "unreadable", "steps": 0, "last_step": None, "problem": str(err)})
    table = pd.DataFrame(rows, columns=["run", "status", "steps", "last_step"] + (["problem"] if any("problem" in r for r in rows) else []))
    if not rows:
        return table
    conds = pd.DataFrame([r.get("_conditions", {}) for r in rows])
    if conditions == "all":
        keys = list(conds.columns)
    elif conditions == "varying":  # among the runs that could be read (an unreadable one has no config)
        known = conds[[bool(r.get("_conditions")) for r in rows]]
        varying = [k for k in known.columns if known[k].astype(str).nunique(dropna=False) > 1]
        keys = [k for k in conds.columns if k in MAIN_CONDITIONS or k in varying]
    else:
        keys = [k for k in conditions if k in conds.columns]
    table = pd.concat([table, conds[keys]], axis=1)
    table["last_step"] = table["last_step"].astype("Int64")
    return table


def _summary(path: Path) -> dict:
    """Status, committed evaluations and last step of one run, without opening it in xarray."""
    root, attrs, metas = load_metadata(path)
    n_steps, _ = committed_rows(metas, attrs)
    last = ArrayReader(root, "step", metas["step"]).read((n_steps - 1,)) if n_steps else None
    if last is not None and last < 0:  # the fill value: the chunk is gone
        raise StoreError(f"{root}: array 'step' is not increasing (a missing or damaged chunk?)")
    status = attrs["status"]
    if status == "running" and not writer_busy(root):  # no process holds it: killed, never closed
        status = "stale"
    return {
        "status": status,
        "steps": n_steps,
        "last_step": None if last is None else int(np.int64(last)),
        "_conditions": run_conditions(attrs, root),
    }
