"""open_run: one run's store as a lazy xarray Dataset of its committed rows.

Only rows counted by the ``committed_steps`` and ``committed_train_steps`` attributes are
shown, read once at opening: a reader never sees a row the writer has not finished, and can
open a run while another process is writing it (open it again to see newer rows).
Every problem with the store is a StoreError naming the run and the array.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr

from logstore.checks import check_coordinates, checked_readers, committed_rows, load_metadata
from logstore.chunks import ArrayReader
from logstore.schema import (
    ATTR_CHECKSUMS,
    ATTRIBUTES,
    COORDINATES,
    DASK_CHUNK_STEPS,
    DATA_VARIABLES,
    StoreError,
)


def _box(key) -> tuple[tuple, tuple | None]:
    """Split an index into the box to read (slices, integers) and, if it holds integer
    arrays, the numpy index that picks from that box what the full index picks."""
    key = key if isinstance(key, tuple) else (key,)
    if not any(isinstance(k, (np.ndarray, list)) for k in key):
        return key, None
    box, pick = [], []
    for k in key:
        if isinstance(k, (np.ndarray, list)):
            k = np.asarray(k)
            k = np.flatnonzero(k) if k.dtype == bool else k
            low = int(k.min()) if k.size else 0
            box.append(slice(low, int(k.max()) + 1 if k.size else 0))
            pick.append(k - low)
        elif isinstance(k, slice):
            box.append(k)
            pick.append(slice(None))
        else:
            box.append(slice(k, k + 1))
            pick.append(0)
    return tuple(box), tuple(pick)


class _Variable:
    """What dask indexes: one variable's committed rows. Dask fuses slices of it into the
    read, so a curve or a step reads only the chunks that hold it, whatever the dask chunks."""

    def __init__(self, reader: ArrayReader, shape: tuple[int, ...], dtype: np.dtype):
        self.reader, self.shape, self.dtype, self.ndim = reader, shape, np.dtype(dtype), len(shape)

    def __getitem__(self, key) -> np.ndarray:
        box, pick = _box(key)
        values = self.reader.read(box)
        return values if pick is None else values[pick]


class _Correct(_Variable):
    """correct as float32: 1.0 correct, 0.0 wrong, NaN where loss is NaN (not evaluated)."""

    def __init__(self, loss: ArrayReader, correct: ArrayReader, shape: tuple[int, ...]):
        super().__init__(correct, shape, np.float32)
        self.loss = loss

    def __getitem__(self, key) -> np.ndarray:
        box, pick = _box(key)
        loss, correct = self.loss.read(box), self.reader.read(box)
        values = np.where(np.isnan(loss), np.float32(np.nan), correct.astype(np.float32))
        return values if pick is None else values[pick]


def _dask_chunks(meta: dict) -> tuple[int, ...]:
    """The store's chunks, but DASK_CHUNK_STEPS along step for the per-fact arrays, so the
    population curve is a few dozen tasks rather than thousands; slicing makes a curve or
    a step read only what it needs anyway."""
    chunks = list(meta["chunk_grid"]["configuration"]["chunk_shape"])
    if meta["dimension_names"][:2] == ["step", "individual"]:
        chunks[0] = max(chunks[0], DASK_CHUNK_STEPS // chunks[0] * chunks[0])
    return tuple(chunks)


def _lazy(variable: _Variable, chunks: tuple[int, ...], name: str) -> da.Array:
    return da.from_array(
        variable,
        chunks=chunks,
        name=f"{name}-{uuid.uuid4().hex}",  # unique, and no hashing of the variable
        lock=False,
        asarray=False,
        inline_array=True,
        meta=np.empty((0,) * variable.ndim, dtype=variable.dtype),
    )


def _prepare(path: str | os.PathLike) -> tuple[Path, dict, dict, dict[str, int]]:
    root, attrs, metas = load_metadata(path)
    n_steps, n_train = committed_rows(metas, attrs)
    return root, attrs, metas, {"step": n_steps, "train_step": n_train}


def open_run(path: str | os.PathLike) -> xr.Dataset:
    """Open one run (its directory or its metrics.zarr) as a lazy, dask-backed Dataset.

    Only committed rows are shown. Coordinates are loaded; data variables stay lazy.
    ``correct``, ``top_prob`` and ``entropy`` are NaN where loss is NaN (the fact was not
    evaluated); ``correct`` is therefore float32: 1.0 (correct), 0.0 (wrong) or NaN (not
    evaluated), so ``ds.correct.mean("individual")`` is the accuracy over evaluated facts.
    Raises StoreError for anything wrong with the store.
    """
    return _dataset(*_prepare(path))


def open_many(paths: list[str | os.PathLike]) -> list[xr.Dataset | StoreError]:
    """``open_run`` of each path; a run that cannot be opened gives its StoreError instead."""
    out = []
    for path in paths:
        try:
            out.append(open_run(path))
        except StoreError as err:
            out.append(err)
    return out


def _dataset(root: Path, attrs: dict, metas: dict, rows: dict[str, int], reader=ArrayReader) -> xr.Dataset:
    """The Dataset of ``_prepare``'s results; ``reader``: what reads each array (ArrayReader;
    benchmarks/bench_store.py --decoders passes one over zarr-python's own arrays)."""
    if reader is ArrayReader:
        readers = checked_readers(root, attrs, metas, rows)
    else:
        readers = {name: reader(root, name, metas[name]) for name in metas}
    coords = {}
    for name, var in COORDINATES.items():
        values = readers[name].read((slice(0, rows.get(var.dims[0])),))
        if var.dtype == "str":
            values = values.astype(str)
        coords[name] = (var.dims, values, metas[name].get("attributes", {}))
    if tuple(coords["attribute"][1]) != ATTRIBUTES:
        raise StoreError(f"{root}: array 'attribute' holds {list(coords['attribute'][1])}, expected {list(ATTRIBUTES)}")
    check_coordinates(root, {name: values for name, (_, values, _) in coords.items()})
    labels = {dim: coords[dim][1] for dim in ("step", "train_step", "individual")}
    for r in readers.values():
        r.labels = labels

    data = {}
    for name, var in DATA_VARIABLES.items():
        if name not in metas:  # ADDED_LATER, absent from an older store
            continue
        shape = tuple(metas[name]["shape"])
        shape = (rows.get(var.dims[0], shape[0]), *shape[1:])
        if name == "correct":  # stored False where not evaluated: masked here, with loss
            variable = _Correct(readers["loss"], readers["correct"], shape)
        else:  # top_prob and entropy are stored NaN where loss is: the writer masks them
            variable = _Variable(readers[name], shape, readers[name].dtype)
        data[name] = (var.dims, _lazy(variable, _dask_chunks(metas[name]), name), metas[name].get("attributes", {}))
    ds = xr.Dataset(data, coords, attrs={k: v for k, v in attrs.items() if k != ATTR_CHECKSUMS})
    ds.correct.attrs["note"] = "1.0 correct, 0.0 wrong, NaN not evaluated (stored as bool)"
    ds.encoding["source"] = str(root)
    return ds
