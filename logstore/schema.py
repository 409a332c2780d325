"""The store schema (DESIGN.md, schema_version 1): names, dimensions and dtypes."""

SCHEMA_VERSION = 1

ATTRIBUTES = ("birth_date", "birth_city", "university", "major", "company", "current_city")
SPLITS = ("train", "heldout", "finetune")
STATUSES = ("running", "complete", "failed")
