"""The benchmarks' output: a table for people, then one JSON object per measurement for tools.

A row is {"bench", "device", "config", "metric", "value", "unit"}.
"""

from __future__ import annotations

import json


def print_rows(rows: list[dict]) -> None:
    config = max(len(r["config"]) for r in rows)
    metric = max(len(r["metric"]) for r in rows)
    print(f"{'config':<{config}}  {'metric':<{metric}}  {'value':>12}  unit   [{rows[0]['device']}]")
    for r in rows:
        print(f"{r['config']:<{config}}  {r['metric']:<{metric}}  {r['value']:>12.4g}  {r['unit']}")
    for r in rows:
        print(json.dumps(r))
