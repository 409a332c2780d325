"""Reading a store's arrays chunk by chunk, straight from the files.

zarr-python reads a chunk through its event loop, with a thread hand-off for the file and
for each codec: reading one step of loss at the paper's scale (20 chunks) takes 20 ms of
CPU through zarr, 8.5 ms here (`benchmarks/bench_store.py --codecs`), and every read of
``open_run`` two to four times the CPU through zarr-python 3.1 (`--decoders`, in
docs/logstore.md). Readers touch many chunks (a curve: one per 8 steps per variable; the
population curve: all of them), so for
the codecs this package writes -- bytes or vlen-utf8, then blosc or zstd, then crc32c --
chunks are decoded here with numcodecs, in the calling (dask worker) thread. Any other
codec chain is read through zarr. The files are plain Zarr v3 either way.
"""

from __future__ import annotations

import itertools
import math
import operator
from pathlib import Path

import google_crc32c
import numcodecs
import numpy as np
import zarr
from zarr.storage import LocalStore

from logstore.schema import StoreError, chunk_checksum


def _decoder(meta: dict, dtype: np.dtype, chunk_shape: tuple[int, ...]):
    """A function from a chunk file's bytes to the chunk, or None if the codecs are not ours."""
    codecs = meta.get("codecs") or []
    if not codecs or meta.get("chunk_key_encoding", {}).get("name") != "default":
        return None
    first, rest = codecs[0], codecs[1:]
    if first["name"] == "bytes":
        if (first.get("configuration") or {}).get("endian", "little") != "little":
            return None
        as_array = lambda raw: np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(chunk_shape)  # noqa: E731
    elif first["name"] == "vlen-utf8":
        vlen = numcodecs.VLenUTF8()
        as_array = lambda raw: vlen.decode(raw).reshape(chunk_shape)  # noqa: E731
    else:
        return None
    steps = []
    for codec in reversed(rest):  # decode in the reverse order of encoding
        if codec["name"] == "crc32c":
            steps.append(_check_crc32c)
        elif codec["name"] == "blosc":
            steps.append(numcodecs.Blosc().decode)  # the settings are in the chunk header
        elif codec["name"] == "zstd":
            steps.append(numcodecs.Zstd().decode)
        else:
            return None

    def decode(raw: bytes) -> np.ndarray:
        for step in steps:
            raw = step(raw)
        return as_array(raw)

    return decode


def _check_crc32c(raw: bytes) -> np.ndarray:
    data = np.frombuffer(raw, dtype=np.uint8)  # a view: google_crc32c takes arrays, not memoryviews
    if len(data) < 4 or google_crc32c.value(data[:-4]) != chunk_checksum(data):
        raise ValueError("checksum (crc32c) does not match: the chunk is truncated or corrupted")
    return data[:-4]


def _fill(meta: dict, dtype: np.dtype):
    fill = meta.get("fill_value")
    if dtype.kind == "f":
        return float(fill)  # JSON spells NaN as "NaN"
    return "" if dtype.kind in "OUT" else np.asarray(fill).astype(dtype)


class ArrayReader:
    """Regions of one array of a run, read from its chunk files (see the module docstring).

    ``meta`` is the array's zarr.json document. ``checksums`` (chunk key -> crc32c, as the
    writer recorded them at its commits; None for a store written before they were) tell a
    chunk never written (all fill) from one lost, and a chunk from one misplaced or stale;
    ``live`` is the index along the first dimension of the one chunk a running writer may be
    rewriting under the reader (not compared); ``labels`` (dimension -> coordinate values)
    name the steps and individuals in errors. Picklable, for dask's distributed scheduler.
    """

    def __init__(self, root: Path, name: str, meta: dict, checksums: dict | None = None, live: int | None = None,
                 labels: dict | None = None):
        self.root, self.name, self.meta = root, name, meta
        self.checksums, self.live, self.labels = checksums, live, labels or {}
        self.shape = tuple(meta["shape"])
        self.chunks = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
        self.dtype = np.dtype(object) if meta["data_type"] == "string" else np.dtype(meta["data_type"])
        self.fill = _fill(meta, self.dtype)
        self.separator = (meta["chunk_key_encoding"].get("configuration") or {}).get("separator", "/")
        self._decode = _decoder(meta, self.dtype, self.chunks)
        self._zarr: zarr.Array | None = None

    def __getstate__(self) -> dict:
        return {"root": self.root, "name": self.name, "meta": self.meta, "checksums": self.checksums, "live": self.live,
                "labels": self.labels}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def read(self, key: tuple) -> np.ndarray:
        """``array[key]`` for a key of slices and integers; StoreError naming run and array."""
        try:
            if self._decode is None:
                if self._zarr is None:
                    self._zarr = zarr.open_array(LocalStore(self.root, read_only=True), path=self.name, mode="r", zarr_format=3)
                return self._zarr[key]
            return self._read(key)
        except StoreError:
            raise
        except Exception as err:
            raise StoreError(
                f"{self.root}: array '{self.name}': cannot read a chunk, truncated or corrupted? ({type(err).__name__}: {err})"
            ) from err

    def _read(self, key: tuple) -> np.ndarray:
        key = key + (slice(None),) * (len(self.shape) - len(key))
        bounds, picks = [], []  # the range read along each dimension, then what to keep of it
        for k, size in zip(key, self.shape):
            if isinstance(k, slice):
                start, stop, step = k.indices(size)
                if step == 1:
                    bounds.append((start, max(start, stop)))
                    picks.append(slice(None))
                else:
                    wanted = np.arange(start, stop, step)
                    low = int(wanted.min()) if wanted.size else 0
                    bounds.append((low, int(wanted.max()) + 1 if wanted.size else 0))
                    picks.append(wanted - low)
            else:
                i = operator.index(k)
                i = i + size if i < 0 else i
                if not 0 <= i < size:
                    raise IndexError(f"index {k} out of bounds for size {size}")
                bounds.append((i, i + 1))
                picks.append(0)
        out = np.empty([b - a for a, b in bounds], dtype=self.dtype)
        if out.size:
            ranges = [range(a // c, math.ceil(b / c)) for (a, b), c in zip(bounds, self.chunks)]
            for coords in itertools.product(*ranges):
                source, target = [], []
                for (a, b), c, i in zip(bounds, self.chunks, coords):
                    lo, hi = max(a, i * c), min(b, (i + 1) * c)
                    source.append(slice(lo - i * c, hi - i * c))
                    target.append(slice(lo - a, hi - a))
                chunk = self._chunk(coords)
                out[tuple(target)] = self.fill if chunk is None else chunk[tuple(source)]  # None: never written
        for axis, pick in enumerate(picks):  # stepped slices, one axis at a time
            if isinstance(pick, np.ndarray):
                out = np.take(out, pick, axis=axis)
        return out[tuple(0 if isinstance(p, int) else slice(None) for p in picks)]

    def _chunk(self, coords: tuple[int, ...]) -> np.ndarray | None:
        raw = self.raw_chunk(coords)
        return None if raw is None else self._decode(raw)

    def raw_chunk(self, coords: tuple[int, ...]) -> bytes | None:
        """A chunk file's bytes, checked against the checksum recorded for it; None if never written."""
        key = self.separator.join(("c", *map(str, coords)))
        try:
            raw = (self.root / self.name / key).read_bytes()
        except FileNotFoundError:
            if self.checksums is not None and key in self.checksums:
                raise StoreError(f"{self.root}: array '{self.name}' is missing its chunk {key} ({self._where(coords)}): "
                                 "a missing or damaged chunk (a lost file); restore it or move the run away") from None
            return None  # never written: all fill (facts not evaluated there)
        if self.checksums is not None and coords[0] != self.live:
            if self.checksums.get(key) != chunk_checksum(raw):
                raise StoreError(f"{self.root}: array '{self.name}' holds a chunk {key} ({self._where(coords)}) that is not "
                                 "the one written there (its checksum is not the one recorded at the commit): a misplaced or "
                                 "stale file, or the run was rewritten since it was opened (open it again)")
        return raw

    def _where(self, coords: tuple[int, ...]) -> str:
        """The steps and individuals a chunk holds, in words: "steps 80..110, individuals 0..127"."""
        words = {"step": "steps", "train_step": "training steps", "individual": "individuals"}
        parts = []
        for dim, i, c, size in zip(self.meta.get("dimension_names") or [], coords, self.chunks, self.shape):
            if dim in words:
                values = self.labels.get(dim)
                lo, hi = i * c, min((i + 1) * c, size) - 1
                if values is not None and len(values):
                    lo, hi = values[min(lo, len(values) - 1)], values[min(hi, len(values) - 1)]
                parts.append(f"{words[dim]} {lo}..{hi}")
        return ", ".join(parts) or f"chunk index {coords}"
