"""Sweeps: a grid of runs from one TOML file, run on a local pool or on a Dask cluster.

A sweep file names a base config and the conditions to vary (docs/sweeps.md):

    base = "../paper.toml"          # relative to the sweep file
    seeds = [0, 1, 2]               # every condition once per seed
    [set]                           # overrides for every run
    "train.steps" = 16000
    [grid]                          # the runs are the cartesian product of these axes
    "world.n_individuals" = [4000, 16000, 64000]
    [[include]]                     # more conditions, outside the grid
    label = "uniform"
    "sampling.kind" = "uniform"

Each run is named from its conditions (``N4000-alpha0.2-seed1``) and lives in
``OUT/SWEEP_NAME/RUN_NAME``. Running a sweep again skips complete runs and resumes partial
ones, so a sweep can be interrupted, restarted or extended (more values, more seeds) safely.
"""

from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

from logstore.runs import flatten_config as flatten
from trainer.config import SECTIONS, Config, ConfigError, from_dict, read_toml
from trainer.references import check_references
from trainer.run import to_toml

SWEEP_KEYS = ("name", "base", "seeds", "runs_per_gpu", "set", "grid", "include")
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


def _conditions(doc: dict, source: Path) -> list[tuple[str, dict]]:
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
    for key in doc:
        if key not in SWEEP_KEYS:
            raise ConfigError(f"{source}: unknown key '{key}' (a sweep file has {', '.join(SWEEP_KEYS)})")
    if "base" not in doc:
        raise ConfigError(f"{source}: base: missing (the config every run starts from, e.g. base = \"../tiny.toml\")")
    if not isinstance(doc["base"], str):
        raise ConfigError(f"{source}: base: expected the path of a config, got {doc['base']!r}")
    if not isinstance(doc.get("grid", {}), dict):
        raise ConfigError(f"{source}: grid: expected a table of axes, got {doc['grid']!r}")
    base_path = (source.parent / doc["base"]).resolve()
    base = read_toml(base_path)
    name = format_value(doc.get("name", source.stem))
    seeds = doc.get("seeds", [base.get("seed", 0)])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{source}: seeds: expected a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{source}: seeds: {seeds} repeats a seed")
    runs_per_gpu = doc.get("runs_per_gpu", 1)
    if not isinstance(runs_per_gpu, int) or isinstance(runs_per_gpu, bool) or runs_per_gpu < 1:
        raise ConfigError(f"{source}: runs_per_gpu: expected an integer >= 1, got {runs_per_gpu!r}")
    common = _overrides(doc.get("set", {}), f"{source}: set")
    common.pop("label", None)
    folder = Path(out) / name

    runs: list[RunSpec] = []
    for label, condition in _conditions(doc, source):
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
            raise ConfigError(f"{source}: two conditions give the run name '{run.name}' ({seen[run.name]} and "
                              f"{run.conditions}); give them distinct 'label's")
        seen[run.name] = run.conditions
    for run in runs:
        outside = _resolve_reference(run, runs, source)
        run.config = from_dict(run.config, source=f"{source} [{run.name}]")
        try:  # runs outside the sweep must exist, have finished and match, before anything starts
            check_references(run.config, outside)
        except ConfigError as err:
            raise ConfigError(f"{source} [{run.name}]: {err}") from None
    _check_no_cycle(runs, source)
    return Sweep(name, source, folder, runs, runs_per_gpu)


REFERENCES = (("train", "init_from"), ("patch", "reference"))  # keys that name another run


def _resolve_reference(run: RunSpec, runs: list[RunSpec], source: Path) -> tuple[str, ...]:
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


def _check_no_cycle(runs: list[RunSpec], source: Path) -> None:
    needs = {r.name: r.needs for r in runs}
    for run in runs:
        chain, name = [run.name], run.name
        while needs[name]:
            name = needs[name][0]
            if name in chain:
                raise ConfigError(f"{source} [{run.name}]: runs start from each other in a circle "
                                  f"({' -> '.join(chain + [name])})")
            chain.append(name)


# ---------------------------------------------------------------------------------------------
# The state of a run folder: what a sweep does with it.

def config_differences(a: Config, b: Config) -> list[str]:
    fa, fb = flatten(a.to_dict()), flatten(b.to_dict())
    return [f"{k}: {fa.get(k)!r} there, {fb.get(k)!r} here" for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def run_state(run: RunSpec) -> tuple[str, str]:
    """("new" | "partial" | "complete" | "busy" | "conflict", why) for the run's folder."""
    from trainer.sweep_run import store_state

    saved = run.path / "config.toml"
    if saved.exists():
        try:
            there = from_dict(read_toml(saved), str(saved))
        except ConfigError as err:
            return "conflict", f"its config.toml is not a valid config ({err})"
        diff = config_differences(there, run.config)
        if diff:
            return "conflict", (f"{run.path} holds a run with a different config ({'; '.join(diff[:3])}"
                                f"{'; ...' if len(diff) > 3 else ''}); delete it or use another --out")
    return store_state(run.path)


def prepare(run: RunSpec) -> None:
    """Create the run folder with its resolved config.toml (the same file ``phasefit train`` writes)."""
    run.path.mkdir(parents=True, exist_ok=True)
    saved = run.path / "config.toml"
    if not saved.exists():
        tmp = saved.with_suffix(".tmp")
        tmp.write_text(to_toml(run.config))
        tmp.replace(saved)


# ---------------------------------------------------------------------------------------------
# Running a sweep.

@dataclass
class Outcome:
    """How one run of a sweep ended: complete, failed, interrupted, or skipped (with why)."""

    name: str
    status: str
    message: str = ""
    wall_s: float = 0.0
    where: str = ""  # the machine or Dask worker that ran it
    skipped: bool = False  # complete before this sweep started


def run_sweep(sweep: Sweep, *, workers: int = 1, scheduler: str | None = None, device: str = "auto",
              progress: bool | None = None, echo=print) -> list[Outcome]:
    """Run every run of the sweep that is not complete; return one Outcome per run, in order.

    Locally: ``workers`` processes on the CPU, or on GPUs ``runs_per_gpu`` runs per device (at
    least ``workers`` in all). With ``scheduler``: each run is a task on that Dask cluster.
    A failed run is reported and does not stop the others. Ctrl-C asks every running run to
    save its resume state and stop; the same sweep run again continues where it stopped.
    """
    from tqdm.auto import tqdm

    from trainer.pool import open_pool, progress_steps

    outcomes: dict[str, Outcome] = {}
    todo: list[RunSpec] = []
    for run in sweep.runs:
        state, why = run_state(run)
        if state == "complete":
            outcomes[run.name] = Outcome(run.name, "complete", "already complete", skipped=True)
        elif state in ("conflict", "busy"):
            outcomes[run.name] = Outcome(run.name, "failed", why)
        else:
            todo.append(run)
    blocked = sum(1 for o in outcomes.values() if o.status == "failed")
    echo(f"sweep {sweep.name}: {len(sweep.runs)} runs in {sweep.folder}; {len(outcomes) - blocked} already complete, "
         + (f"{blocked} blocked, " if blocked else "") + f"{len(todo)} to run")
    for o in outcomes.values():
        if o.status == "failed":
            echo(f"  {o.name}: not run: {o.message}")
    if not todo:
        return [outcomes[r.name] for r in sweep.runs]

    # The pool first: a bad --device or an unreachable --scheduler writes no run folder.
    pool = open_pool(sweep, workers=workers, scheduler=scheduler, device=device, echo=echo)
    try:
        for run in todo:
            prepare(run)
    except BaseException:
        pool.close(wait=False)
        raise
    total = sum(r.config.train.steps for r in todo)
    bar = tqdm(total=total, disable=None if progress is None else not progress, unit="step",
               desc=f"sweep {sweep.name}", dynamic_ncols=True)
    waiting, active = list(todo), {}
    steps_of = {r.name: 0 for r in todo}
    abandoned = False
    last_poll = 0.0

    def finish(run: RunSpec, outcome: Outcome) -> None:
        outcomes[run.name] = outcome
        steps_of[run.name] = run.config.train.steps
        line = f"  {outcome.status:<11} {run.name}"
        if outcome.wall_s:
            line += f" ({outcome.wall_s:.0f} s)"
        if outcome.status != "complete" and outcome.message:
            line += f": {outcome.message}"
        if bar.disable:
            echo(line)
        else:
            bar.write(line)

    try:
        while waiting or active:
            for run in list(waiting):
                deps = [outcomes.get(d) for d in run.needs]
                if any(d is not None and d.status != "complete" for d in deps):
                    bad = next(n for n, d in zip(run.needs, deps) if d is not None and d.status != "complete")
                    waiting.remove(run)
                    finish(run, Outcome(run.name, "failed", f"needs run {bad}, which did not complete"))
                elif all(d is not None for d in deps):
                    waiting.remove(run)
                    active[pool.submit(run)] = run
            for future in [f for f in active if f.done()]:
                run = active.pop(future)
                finish(run, pool.outcome(future, run))
            now = time.monotonic()
            if now - last_poll > 2.0 or not active:
                for run in active.values():
                    steps_of[run.name] = progress_steps(run.path)
                last_poll = now
                bar.n = min(total, sum(steps_of.values()))
                done = sum(1 for r in todo if r.name in outcomes)
                failed = sum(1 for r in todo if r.name in outcomes and outcomes[r.name].status != "complete")
                bar.set_postfix_str(f"runs {done}/{len(todo)} done, {failed} failed, {len(active)} running")
            time.sleep(0.2)
    except KeyboardInterrupt:
        echo(f"sweep {sweep.name}: interrupted; waiting for {len(active)} running runs to save their state "
             "(Ctrl-C again to abandon them)")
        pool.stop()
        try:
            for future, run in list(active.items()):
                finish(run, pool.outcome(future, run))
        except KeyboardInterrupt:
            abandoned = True
    finally:
        bar.close()
        pool.close(wait=not abandoned)
    result = []
    for run in sweep.runs:
        result.append(outcomes.get(run.name) or Outcome(run.name, "interrupted", "not started"))
    return result


def summarise(sweep: Sweep, outcomes: list[Outcome]) -> str:
    counts = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    skipped = sum(1 for o in outcomes if o.skipped)
    parts = [f"{n} {status}" + (f" ({skipped} already)" if status == "complete" and skipped else "")
             for status, n in counts.items()]
    return f"sweep {sweep.name}: {len(outcomes)} runs: {', '.join(parts)}; runs in {sweep.folder}"


def sweep_from_cli(sweep_path: str, out: str | None = "runs", workers: int = 1, scheduler: str | None = None,
                   device: str = "auto") -> int:
    """Entry point of ``phasefit sweep``: 0 when every run is complete, 1 when some failed,
    130 when interrupted (run the same command again to continue)."""
    if workers < 1:
        raise ConfigError(f"--workers {workers}: must be at least 1")
    blocking = next((p for p in [Path(out or "runs"), *Path(out or "runs").parents] if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise ConfigError(f"--out {out}: {blocking} is a file, not a folder")
    sweep = load_sweep(sweep_path, out or "runs")
    outcomes = run_sweep(sweep, workers=workers, scheduler=scheduler, device=device)
    print(summarise(sweep, outcomes))
    if any(o.status == "interrupted" for o in outcomes):
        print(f"phasefit: sweep interrupted; continue with: phasefit sweep {sweep_path} --out {out or 'runs'}")
        return 130
    return 1 if any(o.status != "complete" for o in outcomes) else 0
