"""logstore: the crash-safe Zarr v3 store of per-fact metrics, and its xarray readers.

    from logstore import RunWriter, open_run, open_runs, population_curves, list_runs, StoreError

Names are imported on first use, so a trainer that only writes never imports xarray or
dask. See docs/logstore.md for the schema, the commit protocol and the chunking choice.
"""

import importlib

from logstore.schema import ATTRIBUTES, SCHEMA_VERSION, SPLITS, STATUSES, STORE_NAME, StoreError, json_attribute

_LAZY = {
    "RunWriter": "logstore.writer",
    "open_run": "logstore.reader",
    "verify_store": "logstore.checks",
    "open_runs": "logstore.runs",
    "list_runs": "logstore.runs",
    "population_curves": "logstore.population",
    "find_runs": "logstore.runs",
    "store_path": "logstore.checks",
    "check_store": "logstore.checks",
    "committed_train_steps": "logstore.checks",
    "writer_busy": "logstore.durable",
}

__all__ = ["ATTRIBUTES", "SCHEMA_VERSION", "SPLITS", "STATUSES", "STORE_NAME", "StoreError", "json_attribute", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'logstore' has no attribute {name!r}")
