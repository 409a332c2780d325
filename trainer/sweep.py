"""Sweep files: a grid of runs from one TOML file, read into named, validated runs.

A sweep file names a base config and the conditions to vary (docs/sweeps.md):

    base = "../paper.toml"          # relative to the sweep file
    seeds = [0, 1, 2]               # every condition once per seed
    pack = 4                        # runs that can share a step train as packs of at most 4
    [set]                           # overrides for every run
    "train.steps" = 16000
    [grid]                          # the runs are the cartesian product of these axes
    "world.n_individuals" = [4000, 16000, 64000]
    [[include]]                     # more conditions, outside the grid
    label = "uniform"
    "sampling.kind" = "uniform"

Each run is named from its conditions (``N4000-alpha0.2-seed1``) and lives in
``OUT/SWEEP_NAME/RUN_NAME``; ``"@name"`` references name another run of the sweep.
trainer/pool.py runs them.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from logstore.schema import flatten_config as flatten
from trainer.config import SECTIONS, Config, ConfigError, from_dict, read_toml
from trainer.references import check_references

SWEEP_KEYS = ("name", "base", "seeds", "runs_per_gpu", "pack", "set", "grid", "include")
# Short names of the conditions in run names; other keys use their last part.
SHORT = {"world.n_individuals": "N", "world.n_heldout": "heldout", "world.n_finetune": "new", "sampling.kind": "",
         "sampling.celebrities": "celebs", "sampling.celebrity_weight": "x", "sampling.warmup_individuals": "warm",
         "sampling.warmup_epochs": "epochs", "sampling.n_groups": "groups", "sampling.n_repeats": "repeats",
         "sampling.replay_weight": "replay", "seed": "seed"}


@dataclass
class RunSpec:
    """One run of a sweep: its name, resolved config and folder, and the runs it starts from."""

    name: str
    config: Config
    path: Path
    conditions: dict
    needs: list[str] = field(default_factory=list)


@dataclass
class Sweep:
    name: str
    source: Path
    folder: Path  # OUT/NAME: where the runs live
    runs: list[RunSpec]
    runs_per_gpu: int = 1
    pack: int | None = None  # runs per pack at most (None: the device's default, trainer/pool.py)

    def run(self, name: str) -> RunSpec:
        return next(r for r in self.runs if r.name == name)


def is_config_key(key: str) -> bool:
    return key in ("seed", "name") or ("." in key and key.split(".", 1)[0] in SECTIONS)


def set_key(data: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[last] = value


def format_value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text) or "_"


def condition_label(conditions: dict) -> str:
    """The part of a run name that a set of conditions contributes: ``N4000-alpha0.2``."""
    if "label" in conditions:
        return format_value(conditions["label"])
    parts = []
    for key, value in conditions.items():
        short = SHORT.get(key, key.rsplit(".", 1)[-1])
        parts.append(f"{short}{format_value(value)}")
    return "-".join(parts)


def _overrides(table, where: str) -> dict:
    """A table of overrides (dotted keys or nested tables, plus an optional ``label``)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table of overrides, got {type(table).__name__} {table!r}")
    flat = flatten(table)
    for key in flat:
        if key != "label" and not is_config_key(key):
            raise ConfigError(f"{where}: unknown key '{key}' (config keys look like section.key; sections: "
                              f"{', '.join(SECTIONS)})")
    return flat


def _conditions(doc: dict, source: str) -> list[tuple[str, dict]]:
    """Every condition of the sweep, grid product then includes: (name label, flat overrides)."""
    grid = flatten(doc.get("grid", {}))
    axes = []
    for axis, values in grid.items():
        where = f"{source}: grid.{axis}"
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: expected a non-empty list of values")
        if axis == "seed":
            raise ConfigError(f"{where}: give seeds as the top-level 'seeds = [...]'")
        if is_config_key(axis):
            if any(isinstance(v, (dict, list)) for v in values):
                raise ConfigError(f"{where}: values of a config key must be numbers, strings or booleans")
            axes.append([{axis: v} for v in values])
        else:  # a named axis: keys that vary together, one table of overrides per value
            axes.append([_overrides(v, f"{where}[{i}]") for i, v in enumerate(values)])
    conditions = []
    for cell in itertools.product(*axes) if axes else []:
        label = "-".join(condition_label(t) for t in cell)
        conditions.append((label, {k: v for t in cell for k, v in t.items() if k != "label"}))
    includes = doc.get("include", [])
    if not isinstance(includes, list):
        raise ConfigError(f"{source}: include: expected [[include]] tables")
    for i, table in enumerate(includes):
        table = _overrides(table, f"{source}: include[{i}]")
        conditions.append((condition_label(table), {k: v for k, v in table.items() if k != "label"}))
    return conditions or [("", {})]


def load_sweep(path: str | Path, out: str | Path = "runs") -> Sweep:
    """Read a sweep file into its runs (configs validated, names derived, references resolved).

    Bad input raises ConfigError with one line naming the file, the run and the key.
    """
    source = Path(path)
    doc = read_toml(source)
    known_keys(doc, SWEEP_KEYS, str(source), "a sweep file")
    return sweep_from_doc(doc, source, out)


def known_keys(doc: dict, allowed: tuple[str, ...], where: str, what: str) -> None:
    """One ConfigError line for the first key of ``doc`` that ``what`` does not have."""
    for key in doc:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key '{key}' ({what} has {', '.join(allowed)})")


def check_pool_keys(doc: dict, where: str) -> None:
    """``runs_per_gpu`` and ``pack``, where given, are integers >= 1."""
    for key in ("runs_per_gpu", "pack"):
        value = doc.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{where}: {key}: expected an integer >= 1, got {value!r}")


def sweep_from_doc(doc: dict, source: Path, out: str | Path, where: str | None = None) -> Sweep:
    """The runs of a sweep given as a table of the sweep file's keys (a sweep file's content, or
    an experiment of a study: trainer/study.py). ``base`` is relative to ``source``'s folder;
    ``where`` names the table in error messages (default: the file)."""
    where = where or str(source)
    if "base" not in doc:
        raise ConfigError(f"{where}: base: missing (the config every run starts from, e.g. base = \"../tiny.toml\")")
    if not isinstance(doc["base"], str) or "\0" in doc["base"]:
        raise ConfigError(f"{where}: base: expected the path of a config, got {doc['base']!r}")
    if not isinstance(doc.get("grid", {}), dict):
        raise ConfigError(f"{where}: grid: expected a table of axes, got {doc['grid']!r}")
    base_path = (source.parent / doc["base"]).resolve()
    base = read_toml(base_path)
    name = format_value(doc.get("name", source.stem))
    seeds = doc.get("seeds", [base.get("seed", 0)])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{where}: seeds: expected a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: seeds: {seeds} repeats a seed")
    check_pool_keys(doc, where)
    common = _overrides(doc.get("set", {}), f"{where}: set")
    common.pop("label", None)
    folder = Path(out) / name

    runs: list[RunSpec] = []
    for label, condition in _conditions(doc, where):
        for seed in seeds:
            run_name = f"{label}-seed{seed}" if label else f"seed{seed}"
            data = copy.deepcopy(base)
            data["name"] = name
            for key, value in {**common, **condition, "seed": seed}.items():
                set_key(data, key, value)
            # config stays a dict until every name is known (references between runs)
            runs.append(RunSpec(run_name, data, folder / run_name, {**condition, "seed": seed}))
    seen: dict[str, dict] = {}
    for run in runs:
        if run.name in seen:
            raise ConfigError(f"{where}: two conditions give the run name '{run.name}' ({seen[run.name]} and "
                              f"{run.conditions}); give them distinct 'label's")
        seen[run.name] = run.conditions
    for run in runs:
        outside = _resolve_reference(run, runs, where)
        run.config = from_dict(run.config, source=f"{where} [{run.name}]")
        try:  # runs outside the sweep must exist, have finished and match, before anything starts
            check_references(run.config, outside)
        except ConfigError as err:
            raise ConfigError(f"{where} [{run.name}]: {err}") from None
    _check_no_cycle(runs, where)
    return Sweep(name, source, folder, runs, doc.get("runs_per_gpu", 1), doc.get("pack"))


REFERENCES = (("train", "init_from"), ("patch", "reference"))  # keys that name another run


def _resolve_reference(run: RunSpec, runs: list[RunSpec], source: str) -> tuple[str, ...]:
    """``"@pretrain"`` in ``train.init_from`` or ``patch.reference``: the run of this sweep named
    pretrain-seedS (same seed) or pretrain, which must finish first. Returns the keys that
    name runs outside the sweep."""
    outside = []
    for section, key in REFERENCES:
        start = run.config.get(section, {}).get(key, "")
        if not isinstance(start, str) or not start.startswith("@"):
            if start:
                outside.append(f"{section}.{key}")
            continue
        label, seed = start[1:], run.config.get("seed")
        by_name = {r.name: r for r in runs}
        target = by_name.get(f"{label}-seed{seed}") or by_name.get(label)
        if target is None or target is run:
            raise ConfigError(f"{source} [{run.name}]: {section}.{key}: no other run named {label}-seed{seed} or "
                              f"{label} in this sweep")
        run.config[section][key] = str(target.path.resolve())
        run.needs.append(target.name)
    return tuple(outside)


def _check_no_cycle(runs: list[RunSpec], source: str) -> None:
    needs = {r.name: r.needs for r in runs}
    for run in runs:
        chain, name = [run.name], run.name
        while needs[name]:
            name = needs[name][0]
            if name in chain:
                raise ConfigError(f"{source} [{run.name}]: runs start from each other in a circle "
                                  f"({' -> '.join(chain + [name])})")
            chain.append(name)
