"""Chunk shapes and codecs of the store, and the creation of its arrays.

The per-fact arrays (step, individual, attribute) are read two ways: all facts at one step,
and one fact's whole curve. A chunk of S steps x I individuals x all attributes costs a
step read N/I chunks of S rows and a curve read steps/S chunks of I individuals, so both
stay small when neither S nor I is. docs/logstore.md has the measurements (64k + 16k
individuals, 200 steps) behind the defaults below; `benchmarks/bench_store.py --layouts`
reruns them. The same layout is written and read: the writer holds the current block of S
steps in memory and rewrites its chunks whole (atomically) as rows arrive, which costs less
than the read-side penalty of one-step chunks, so no end-of-run rewrite is needed.
"""

from __future__ import annotations

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from logstore.schema import ATTRIBUTES, VARIABLES

CHUNK_STEPS = 8  # evaluation steps per chunk of the per-fact arrays (S)
CHUNK_INDIVIDUALS = 4096  # individuals per chunk (I): the trainer's dense subset per split
DASK_CHUNK_STEPS = 128  # steps per dask chunk of the per-fact arrays when reading
ROW_CHUNK_STEPS = 256  # steps per chunk of the small per-step arrays (step, attention)
TRAIN_CHUNK = 65_536  # training steps per chunk of train_step, train_loss, lr

# Flat chunk keys ("c.0.1.0") keep every chunk of an array in one directory: one directory
# to fsync per array before a commit, instead of one per chunk.
CHUNK_KEY_ENCODING = {"name": "default", "separator": "."}


def compressors(dtype: str) -> tuple:
    """Codecs for one dtype: blosc, then a crc32c checksum (measured: docs/logstore.md).

    Metrics are float32 whose mantissas are noise: no codec shrinks them by a quarter, so
    the fastest to decode wins, lz4 with byte shuffle (3% more bytes than zstd, decoded
    three times faster). Booleans compress 11 to 1 with bitshuffle and zstd. The checksum
    turns a corrupted chunk into an error instead of wrong numbers.
    """
    if dtype == "str":
        return (ZstdCodec(level=1), Crc32cCodec())
    if dtype == "bool":
        return (BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle"), Crc32cCodec())
    return (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), Crc32cCodec())


def chunk_shape(name: str, shape: tuple[int, ...], chunk_steps: int, chunk_individuals: int) -> tuple[int, ...]:
    """The chunk shape of variable ``name`` for an array of ``shape`` (steps as rows)."""
    dims = VARIABLES[name].dims
    out = []
    for dim, size in zip(dims, shape):
        if dim == "step":
            out.append(chunk_steps if dims[1:2] == ("individual",) else ROW_CHUNK_STEPS)
        elif dim == "individual" and dims[0] == "step":
            out.append(min(chunk_individuals, max(size, 1)))
        elif dim == "train_step":
            out.append(TRAIN_CHUNK)
        else:
            out.append(max(size, 1))  # one chunk along the small dimensions
    return tuple(out)


def create_arrays(
    group: zarr.Group,
    n_individuals: int,
    n_layers: int,
    n_heads: int,
    chunk_steps: int = CHUNK_STEPS,
    chunk_individuals: int = CHUNK_INDIVIDUALS,
) -> dict[str, zarr.Array]:
    """Create every variable of the schema in ``group``, with no evaluation or train rows yet.

    The step and train_step dimensions start at length 0 and grow as rows are appended.
    """
    sizes = {
        "step": 0,
        "train_step": 0,
        "individual": n_individuals,
        "attribute": len(ATTRIBUTES),
        "layer": n_layers,
        "head": n_heads,
    }
    arrays = {}
    for name, var in VARIABLES.items():
        shape = tuple(sizes[d] for d in var.dims)
        arrays[name] = group.create_array(
            name,
            shape=shape,
            dtype=str if var.dtype == "str" else np.dtype(var.dtype),
            chunks=chunk_shape(name, shape, chunk_steps, chunk_individuals),
            compressors=compressors(var.dtype),
            fill_value=var.fill,
            dimension_names=var.dims,
            attributes=var.attrs,
            chunk_key_encoding=CHUNK_KEY_ENCODING,
            # Chunks holding only the fill value (facts not evaluated) are not written.
            config={"write_empty_chunks": False},
        )
    return arrays
