"""Creating a store in one piece, and reopening one for writing after a crash or a checkpoint.

Both leave the store in a state every reader and a later writer can trust: a store exists
complete or not at all, and a resumed store has its commit lowered first (readers stop
showing dropped rows at once) and its arrays trimmed after (no stale chunk survives to be
mistaken for a new row).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import zarr

from logstore import layout
from logstore.durable import DurableStore, fsync_dir, remove_partial_files
from logstore.errors import StoreError
from logstore.schema import (
    ATTRIBUTES,
    SCHEMA_VERSION,
    SPLITS,
    STEP_VARIABLES,
    TRAIN_VARIABLES,
    VARIABLES,
)


def create_store(
    path: str | os.PathLike,
    individual: np.ndarray,
    split: np.ndarray,
    rank: np.ndarray,
    baseline: np.ndarray,
    n_layers: int,
    n_heads: int,
    config: dict | str,
    package_version: str,
    chunk_steps: int,
    chunk_individuals: int,
    fsync: bool,
) -> Path:
    """Build a new store at ``path`` (see RunWriter.create); returns its path."""
    root = Path(path)
    if root.exists():
        raise StoreError(f"{root}: already exists (use RunWriter.resume to continue a run)")
    individual = np.asarray(individual, dtype=np.int64)
    split = np.asarray(split).astype(str)
    rank = np.asarray(rank, dtype=np.int64)
    baseline = np.asarray(baseline, dtype=np.float64)
    n = len(individual)
    if individual.ndim != 1 or split.shape != (n,) or rank.shape != (n,):
        raise ValueError(f"individual, split and rank must all have shape ({n},)")
    if baseline.shape != (len(ATTRIBUTES),):
        raise ValueError(f"baseline must have one value per attribute {ATTRIBUTES}")
    unknown = set(np.unique(split)) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; expected one of {SPLITS}")
    # Built under a temporary name and renamed at the end: the store exists complete or not at all.
    tmp = root.with_name(f"{root.name}.creating-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    store = DurableStore(tmp, fsync=fsync)
    attributes = {
        "schema_version": SCHEMA_VERSION,
        "config": config if isinstance(config, str) else json.dumps(config, sort_keys=True, default=str),
        "status": "running",
        "committed_steps": 0,
        "committed_train_steps": 0,
        "package_version": str(package_version),
    }
    group = zarr.open_group(store, mode="w-", zarr_format=3, attributes=attributes)
    arrays = layout.create_arrays(group, n, int(n_layers), int(n_heads), chunk_steps, chunk_individuals)
    arrays["individual"][:] = individual
    arrays["split"][:] = split
    arrays["rank"][:] = rank
    arrays["attribute"][:] = np.array(ATTRIBUTES)
    arrays["baseline"][:] = baseline
    store.sync()
    tmp.rename(root)
    if fsync:
        fsync_dir(root.parent)
    return root


def reopen_store(root: Path, attrs: dict, after_step: int | None, fsync: bool) -> tuple[int, int]:
    """Prepare a store for a resumed writer (see RunWriter.resume; hold its lock).

    Returns the committed (evaluation, training) rows the writer continues after.
    """
    remove_partial_files(root)
    store = DurableStore(root, fsync=fsync)
    group = zarr.open_group(store, mode="r+", use_consolidated=False)
    missing = [name for name in VARIABLES if name not in group]
    if missing:
        raise StoreError(f"{root}: array '{missing[0]}' is missing")
    committed = int(attrs["committed_steps"])
    committed_train = int(attrs.get("committed_train_steps", group["train_step"].shape[0]))
    if after_step is not None:
        committed = int(np.searchsorted(group["step"][:committed], after_step, side="right"))
        committed_train = int(np.searchsorted(group["train_step"][:committed_train], after_step, side="right"))
    new_attrs = {k: v for k, v in attrs.items() if k != "reason"}
    new_attrs.update(status="running", committed_steps=committed, committed_train_steps=committed_train)
    group.attrs.put(new_attrs)  # also drops the consolidated metadata, stale from now on
    store.sync()
    for name in STEP_VARIABLES:  # zarr deletes the chunks past the new end
        resize_rows(group[name], committed)
    for name in TRAIN_VARIABLES:
        resize_rows(group[name], committed_train)
    store.sync()
    return committed, committed_train


def resize_rows(array: zarr.Array, rows: int) -> None:
    """Make ``array`` ``rows`` long along its first dimension (deleting chunks past it)."""
    if array.shape[0] != rows:
        array.resize((rows, *array.shape[1:]))
