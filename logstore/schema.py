"""The store schema (schema_version 1; docs/logstore.md): names, dimensions, dtypes and attributes.

Everything a writer creates and a reader checks is listed here once: the store name, the
variables with their dimensions, on-disk dtypes and fill values, and the group attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SCHEMA_VERSION = 1

ATTRIBUTES = ("birth_date", "birth_city", "university", "major", "company", "current_city")
SPLITS = ("train", "heldout", "finetune")
STATUSES = ("running", "complete", "failed")

class StoreError(Exception):
    """A store is missing, malformed, of an unknown schema version, or corrupted.

    The message names the run (its path) and, where it applies, the array at fault.
    """


STORE_NAME = "metrics.zarr"  # inside a run directory: runs/NAME/metrics.zarr

# Group attributes (docs/logstore.md, "Store schema").
ATTR_SCHEMA_VERSION = "schema_version"
ATTR_CONFIG = "config"  # JSON of the resolved configuration
ATTR_STATUS = "status"
ATTR_COMMITTED_STEPS = "committed_steps"  # rows of `step` that are complete; readers show only those
ATTR_PACKAGE_VERSION = "package_version"
ATTR_COMMITTED_TRAIN_STEPS = "committed_train_steps"  # rows of `train_step` that are complete
ATTR_REASON = "reason"  # only when status is failed
ATTR_CHECKSUMS = "chunk_checksums"  # array -> chunk key -> crc32c of every chunk each commit wrote
# Written by the trainer so that no reader re-derives them (stores without them still open):
ATTR_STAGES = "stages"  # JSON list of the sampling schedule's stages: {start, end, label, ranks}
ATTR_CONDITIONS = "conditions"  # JSON of the run's conditions under their short names (N, sampling, ...)
ATTR_CONDITION_LABEL = "condition_label"  # the sampling condition in words ("power law alpha=0.7")


@dataclass(frozen=True)
class Variable:
    """One array of the store: its dimensions, on-disk dtype, fill value and attributes.

    ``fill`` is what a chunk never written reads as; for the per-fact arrays it is also the
    value of a fact not evaluated, so all-unevaluated chunks are never written at all.
    """

    dims: tuple[str, ...]
    dtype: str
    fill: object
    attrs: dict = field(default_factory=dict)


FACT = ("step", "individual", "attribute")
ATTENTION = ("step", "layer", "head")

COORDINATES: dict[str, Variable] = {
    "step": Variable(("step",), "int64", -1, {"long_name": "training step of each evaluation", "units": "steps"}),
    "individual": Variable(("individual",), "int64", -1, {"long_name": "id in the world"}),
    "attribute": Variable(("attribute",), "str", "", {"long_name": "attribute of the biography"}),
    "split": Variable(("individual",), "str", "", {"long_name": "train | heldout | finetune"}),
    "rank": Variable(
        ("individual",), "int64", -1, {"long_name": "frequency rank under the sampling distribution (0 = most frequent, -1 outside train)"}
    ),
    "train_step": Variable(("train_step",), "int64", -1, {"long_name": "training step", "units": "steps"}),
}

DATA_VARIABLES: dict[str, Variable] = {
    "loss": Variable(FACT, "float32", np.nan, {"long_name": "cross-entropy summed over the value's tokens", "units": "nats"}),
    "correct": Variable(FACT, "bool", False, {"long_name": "every value token is the argmax"}),
    "top_prob": Variable(FACT, "float32", np.nan, {"long_name": "top probability at the value's first token"}),
    "entropy": Variable(FACT, "float32", np.nan, {"long_name": "predictive entropy at the value's first token", "units": "nats"}),
    "exposures": Variable(("step", "individual"), "int32", 0, {"long_name": "biographies of this individual trained on so far"}),
    "baseline": Variable(("attribute",), "float64", np.nan, {"long_name": "no-knowledge loss", "units": "nats"}),
    "chance_accuracy": Variable(("attribute",), "float64", np.nan, {"long_name": "no-knowledge accuracy (chance level)"}),
    "train_loss": Variable(("train_step",), "float32", np.nan, {"long_name": "mean token loss of the training step", "units": "nats"}),
    "lr": Variable(("train_step",), "float32", np.nan, {"long_name": "learning rate"}),
    "attn_name_to_name": Variable(ATTENTION, "float32", np.nan, {"long_name": "attention signature: name to name"}),
    "attn_value_to_name": Variable(ATTENTION, "float32", np.nan, {"long_name": "attention signature: value to name"}),
    "attn_sharpness": Variable(ATTENTION, "float32", np.nan, {"long_name": "attention signature: sharpness"}),
}

VARIABLES: dict[str, Variable] = {**COORDINATES, **DATA_VARIABLES}
# Variables added to schema_version 1 after its first stores: a store without them still opens
# (readers leave them out, a resumed writer does without).
ADDED_LATER = ("chance_accuracy",)

# The per-fact variables, written in step blocks (correct, top_prob, entropy mean nothing where loss is NaN).
FACT_VARIABLES = ("loss", "correct", "top_prob", "entropy")
# Variables with one row per evaluation step (the step dimension first).
STEP_VARIABLES = tuple(name for name, v in VARIABLES.items() if v.dims[0] == "step")
TRAIN_VARIABLES = tuple(name for name, v in VARIABLES.items() if v.dims[0] == "train_step")
ATTENTION_VARIABLES = ("attn_name_to_name", "attn_value_to_name", "attn_sharpness")


# ---------------------------------------------------------------------------- layout
# Chunk shapes and codecs of the store, and the creation of its arrays.
#
# The per-fact arrays (step, individual, attribute) are read two ways: all facts at one step,
# and one fact's whole curve. A chunk of S steps x I individuals x all attributes costs a
# step read N/I chunks of S rows and a curve read steps/S chunks of I individuals, so both
# stay small when neither S nor I is. docs/logstore.md has the measurements (64k + 16k
# individuals, 200 steps) behind the defaults below; `benchmarks/bench_store.py --layouts`
# reruns them. The same layout is written and read: the writer holds the current block of S
# steps in memory and rewrites its chunks whole (atomically) as rows arrive, which costs less
# than the read-side penalty of one-step chunks, so no end-of-run rewrite is needed.

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
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

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
    group,
    n_individuals: int,
    n_layers: int,
    n_heads: int,
    chunk_steps: int = CHUNK_STEPS,
    chunk_individuals: int = CHUNK_INDIVIDUALS,
) -> dict:
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


def chunk_checksum(data) -> int:
    """The crc32c a chunk file ends with (its Crc32cCodec's), as an integer: what the writer
    records for each chunk it writes and a reader compares."""
    return int.from_bytes(bytes(memoryview(data)[-4:]), "little")


def json_attribute(attrs: dict, name: str, default=None):
    """A store attribute written as JSON (config, stages, conditions), decoded; ``default``
    when it is absent (a store written before the attribute existed) or not JSON."""
    import json

    raw = attrs.get(name)
    if raw is None:
        return default
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return default


def flatten_config(config: dict | str, prefix: str = "") -> dict:
    """{"world": {"n_individuals": 8}} -> {"world.n_individuals": 8} (lists kept as lists)."""
    if isinstance(config, str):
        import json

        config = json.loads(config) if config else {}
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
