"""The store schema (DESIGN.md, schema_version 1): names, dimensions, dtypes and attributes.

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

STORE_NAME = "metrics.zarr"  # inside a run directory: runs/NAME/metrics.zarr

# Group attributes. DESIGN.md names the first five; the last two are ours: how many rows of
# the train_step arrays are complete, and why a failed run failed.
ATTR_SCHEMA_VERSION = "schema_version"
ATTR_CONFIG = "config"  # JSON of the resolved configuration
ATTR_STATUS = "status"
ATTR_COMMITTED_STEPS = "committed_steps"  # rows of `step` that are complete; readers show only those
ATTR_PACKAGE_VERSION = "package_version"
ATTR_COMMITTED_TRAIN_STEPS = "committed_train_steps"  # rows of `train_step` that are complete
ATTR_REASON = "reason"  # only when status is failed


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
    "train_loss": Variable(("train_step",), "float32", np.nan, {"long_name": "mean token loss of the training step", "units": "nats"}),
    "lr": Variable(("train_step",), "float32", np.nan, {"long_name": "learning rate"}),
    "attn_name_to_name": Variable(ATTENTION, "float32", np.nan, {"long_name": "attention signature: name to name"}),
    "attn_value_to_name": Variable(ATTENTION, "float32", np.nan, {"long_name": "attention signature: value to name"}),
    "attn_sharpness": Variable(ATTENTION, "float32", np.nan, {"long_name": "attention signature: sharpness"}),
}

VARIABLES: dict[str, Variable] = {**COORDINATES, **DATA_VARIABLES}

# The per-fact variables, written in step blocks (correct, top_prob, entropy mean nothing where loss is NaN).
FACT_VARIABLES = ("loss", "correct", "top_prob", "entropy")
# Variables with one row per evaluation step (the step dimension first).
STEP_VARIABLES = tuple(name for name, v in VARIABLES.items() if v.dims[0] == "step")
TRAIN_VARIABLES = tuple(name for name, v in VARIABLES.items() if v.dims[0] == "train_step")
ATTENTION_VARIABLES = ("attn_name_to_name", "attn_value_to_name", "attn_sharpness")
