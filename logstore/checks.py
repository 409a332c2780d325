"""Finding a run's store and checking that it is one this package can read (no xarray here)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from logstore.chunks import ArrayReader
from logstore.durable import PARTIAL_SUFFIX
from logstore.schema import (
    ADDED_LATER,
    ATTR_CHECKSUMS,
    COORDINATES,
    SCHEMA_VERSION,
    SPLITS,
    STATUSES,
    STEP_VARIABLES,
    STORE_NAME,
    TRAIN_VARIABLES,
    VARIABLES,
    StoreError,
)


def store_path(path: str | os.PathLike) -> Path:
    """The metrics.zarr of a run directory, or ``path`` itself if it is the store."""
    path = Path(path)
    return path / STORE_NAME if (path / STORE_NAME).is_dir() else path


def check_store(path: str | os.PathLike) -> tuple[Path, dict]:
    """Resolve a run's store and return it with its group attributes, or raise StoreError.

    Checks that it is a Zarr v3 group with this package's schema_version.
    """
    root, doc = _group_document(path)
    return root, doc["attributes"]


def _group_document(path: str | os.PathLike) -> tuple[Path, dict]:
    root = store_path(path)
    meta = root / "zarr.json"
    if not root.is_dir():
        raise StoreError(f"{root}: not a run store ({'not a directory' if root.exists() else 'no such directory'})")
    if not meta.is_file():
        raise StoreError(f"{root}: not a Zarr store (no zarr.json)")
    try:
        doc = json.loads(meta.read_bytes())
    except (OSError, ValueError) as err:
        raise StoreError(f"{root}: unreadable store metadata zarr.json ({err})") from err
    if not isinstance(doc, dict) or doc.get("zarr_format") != 3 or doc.get("node_type") != "group":
        raise StoreError(f"{root}: not a Zarr v3 group (zarr.json)")
    attrs = doc.get("attributes") or {}
    if "schema_version" not in attrs:
        raise StoreError(f"{root}: not a phasefit metrics store (no schema_version attribute)")
    if attrs["schema_version"] != SCHEMA_VERSION:
        raise StoreError(f"{root}: unknown schema_version {attrs['schema_version']!r} (this logstore reads {SCHEMA_VERSION})")
    for key in ("committed_steps", "status"):
        if key not in attrs:
            raise StoreError(f"{root}: attribute '{key}' is missing")
    for key in ("committed_steps", "committed_train_steps"):
        if key in attrs and not _count(attrs[key]):
            raise StoreError(f"{root}: attribute '{key}' is {attrs[key]!r}, not a count of rows")
    if attrs["status"] not in STATUSES:
        raise StoreError(f"{root}: attribute 'status' is {attrs['status']!r}, not one of {', '.join(STATUSES)}")
    return root, doc


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _shape_problem(meta: dict) -> str | None:
    """Why an array's shape or chunk shape is not usable, or None."""
    shape = meta.get("shape")
    try:
        chunks = meta["chunk_grid"]["configuration"]["chunk_shape"]
    except (KeyError, TypeError):
        return "no chunk shape"
    if not isinstance(shape, list) or not all(_count(n) for n in shape):
        return f"shape {shape!r}"
    if not isinstance(chunks, list) or len(chunks) != len(shape) or not all(_count(n) and n > 0 for n in chunks):
        return f"chunk shape {chunks!r}"
    return None


def load_metadata(path: str | os.PathLike) -> tuple[Path, dict, dict[str, dict]]:
    """``check_store``, then every array's metadata (its zarr.json document), checked.

    Read as plain JSON (from the consolidated metadata of a finished run, else from each
    array's zarr.json): parsing it with zarr costs about 0.5 ms per array, most of the time
    to open a small run. StoreError names the first array missing or not as the schema says.
    """
    root, doc = _group_document(path)
    attrs = doc["attributes"]
    consolidated = (doc.get("consolidated_metadata") or {}).get("metadata") or {}
    metas = {}
    for name, var in VARIABLES.items():
        file = root / name / "zarr.json"
        if not file.is_file():  # checked even when consolidated metadata lists it
            if name in ADDED_LATER:
                continue
            raise StoreError(f"{root}: array '{name}' is missing")
        meta = consolidated.get(name)
        if meta is None:
            try:
                meta = json.loads(file.read_bytes())
            except (OSError, ValueError) as err:
                raise StoreError(f"{root}: array '{name}' has unreadable metadata ({err})") from err
        dtype = "string" if var.dtype == "str" else var.dtype
        if not isinstance(meta, dict) or meta.get("node_type") != "array":
            raise StoreError(f"{root}: '{name}' is not an array")
        if meta.get("dimension_names") != list(var.dims) or meta.get("data_type") != dtype:
            raise StoreError(
                f"{root}: array '{name}' has dimensions {meta.get('dimension_names')} and dtype {meta.get('data_type')}, "
                f"expected {list(var.dims)} and {dtype}"
            )
        problem = _shape_problem(meta)
        if problem:
            raise StoreError(f"{root}: array '{name}' has an unusable {problem}")
        metas[name] = meta
    return root, attrs, metas


def committed_train_steps(path: str | os.PathLike) -> int:
    """Training steps a run's store has committed so far (0 when it has none or is unreadable):
    a cheap progress count for a run being written."""
    try:
        return int(check_store(path)[1].get("committed_train_steps", 0))
    except StoreError:
        return 0


def committed_rows(metas: dict[str, dict], attrs: dict) -> tuple[int, int]:
    """How many evaluation and training rows are committed (and present in every array)."""
    steps = min([int(attrs["committed_steps"])] + [metas[n]["shape"][0] for n in STEP_VARIABLES])
    train = int(attrs.get("committed_train_steps", metas["train_step"]["shape"][0]))
    train = min([train] + [metas[n]["shape"][0] for n in TRAIN_VARIABLES])
    return steps, train


def check_coordinates(root: Path, coords: dict[str, np.ndarray]) -> None:
    """A coordinate chunk that is lost reads as fill values (-1, ""), which no writer commits:
    steps increase, ids are unique and non-negative, every individual has a split."""
    for name in ("step", "train_step"):
        if len(coords[name]) and (coords[name][0] < 0 or (np.diff(coords[name]) <= 0).any()):
            raise StoreError(f"{root}: array '{name}' is not increasing (a missing or damaged chunk?)")
    ids = coords["individual"]
    if (ids < 0).any() or len(np.unique(ids)) != len(ids):
        raise StoreError(f"{root}: array 'individual' holds negative or repeated ids (a missing or damaged chunk?)")
    if not np.isin(coords["split"], SPLITS).all():
        raise StoreError(f"{root}: array 'split' holds values other than {', '.join(SPLITS)} (a missing or damaged chunk?)")


def checked_readers(root: Path, attrs: dict, metas: dict[str, dict], rows: dict[str, int]) -> dict[str, ArrayReader]:
    """An ArrayReader per array, holding the chunk checksums its commits recorded (none for a
    store written before they were) and, for a running store, the one chunk along the rows
    that its writer (or a writer killed mid-commit) may have rewritten since: not compared."""
    checksums = attrs.get(ATTR_CHECKSUMS)
    readers = {}
    for name, meta in metas.items():
        reader = readers[name] = ArrayReader(root, name, meta)
        committed = rows.get(meta["dimension_names"][0])
        if isinstance(checksums, dict):
            reader.checksums = checksums.get(name, {})
            if attrs.get("status") == "running" and committed:
                reader.live = (committed - 1) // reader.chunks[0]
    return readers


def verify_store(path: str | os.PathLike) -> None:
    """Check, without reading the metrics, that a run's store holds what its writer committed
    (before a resume writes to it): the coordinates; every recorded chunk of committed rows
    present, with the checksum recorded for it; no chunk there that no commit wrote; and the
    last block of rows, which a resumed writer reads back, decodable. Raises StoreError naming
    the first problem. A store written before checksums were recorded gets the coordinate and
    last-block checks only."""
    root, attrs, metas = load_metadata(path)
    rows = dict(zip(("step", "train_step"), committed_rows(metas, attrs)))
    readers = checked_readers(root, attrs, metas, rows)
    coordinates = {name: readers[name].read((slice(0, rows.get(var.dims[0])),)) for name, var in COORDINATES.items()}
    check_coordinates(root, coordinates)
    for name, reader in readers.items():
        dim = reader.meta["dimension_names"][0]
        committed = rows.get(dim, reader.shape[0])
        if reader.checksums is not None:
            held = -(-committed // reader.chunks[0])  # chunks along the rows that hold committed rows
            on_disk = {p.name for p in (root / name).glob("c*") if p.is_file() and not p.name.endswith(PARTIAL_SUFFIX)}
            for key in sorted(set(reader.checksums) | on_disk):
                index = tuple(int(c) for c in key.split(reader.separator)[1:])
                if index and index[0] < held:
                    reader.raw_chunk(index)  # StoreError if lost, misplaced, or not a chunk of ours
        if committed and dim in rows:  # what a resumed writer reads back: the last block
            start = (committed - 1) // reader.chunks[0] * reader.chunks[0]
            reader.read((slice(start, committed),))
