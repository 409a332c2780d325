"""Study files: the whole study at one scale, as named experiments of one sweep each.

A study file (configs/studies/, docs/study.md) names its experiments after the sweep files of
configs/sweeps/ (plateau_vs_n, patching, alpha, ...), each a table of a sweep file's keys,
optionally starting from a sweep file:

    name = "tiny"                     # the folder under --out
    seeds = [0, 1, 2]                 # every experiment's seeds (an experiment may give its own)
    base = "../tiny.toml"             # the config every run starts from (the scale)
    [set]                             # overrides for every run of every experiment
    "train.lr_schedule" = "constant"
    [experiments.alpha]
    sweep = "../sweeps/alpha.toml"    # optional: its set, grid and include
    [experiments.alpha.set]           # merged over the sweep file's set
    "world.n_individuals" = 700
    [experiments.alpha.grid]          # replaces the sweep file's grid
    "sampling.alpha" = [0.0, 0.5, 1.0]

A run's config: base < the study's set < the sweep file's set < the experiment's set < its
grid or include cell < its seed. Paths are relative to the file that gives them (an
experiment's ``sweep`` and ``base``, the study's ``base``: the study file; a sweep file's own
``base``: that sweep file, used only when the study and the experiment give none). Each
experiment is an ordinary sweep in ``OUT/STUDY/EXPERIMENT/``; ``all_runs`` joins them for one
pool (trainer/pool.py), and ``estimate_seconds`` says how long they would take.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from logstore.schema import flatten_config as flatten
from trainer.config import Config, ConfigError, read_toml
from trainer.sweep import SWEEP_KEYS, RunSpec, Sweep, check_pool_keys, format_value, known_keys, sweep_from_doc

STUDY_KEYS = ("name", "seeds", "base", "pack", "runs_per_gpu", "set", "experiments")
EXPERIMENT_KEYS = ("sweep", "base", "seeds", "set", "grid", "include")


@dataclass
class Study:
    name: str
    source: Path
    folder: Path  # OUT/NAME: one folder per experiment below it
    experiments: dict[str, Sweep]
    runs_per_gpu: int = 1
    pack: int | None = None

    def all_runs(self) -> Sweep:
        """Every run of every experiment as one sweep (names ``experiment/run``), so that one
        pool trains them all and runs of different experiments that can share a step pack."""
        runs = [replace(r, name=f"{name}/{r.name}", needs=[f"{name}/{n}" for n in r.needs])
                for name, sweep in self.experiments.items() for r in sweep.runs]
        return Sweep(self.name, self.source, self.folder, runs, self.runs_per_gpu, self.pack)


def _table(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table, got {type(value).__name__} {value!r}")
    return value


def _path(value, where: str) -> str:
    if not isinstance(value, str) or not value or "\0" in value:
        raise ConfigError(f"{where}: expected the path of a file, got {value!r}")
    return value


def experiment_doc(study: dict, name: str, table: dict, source: Path) -> dict:
    """The sweep-file table of one experiment (see the module docstring for the order)."""
    where = f"{source}: experiments.{name}"
    known_keys(table, EXPERIMENT_KEYS, where, "an experiment")
    sweep: dict = {}
    base = None
    if "sweep" in table:
        sweep_path = (source.parent / _path(table["sweep"], f"{where}.sweep")).resolve()
        sweep = read_toml(sweep_path)
        known_keys(sweep, SWEEP_KEYS, str(sweep_path), "a sweep file")
        if "base" in sweep:
            base = sweep_path.parent / _path(sweep["base"], f"{sweep_path}: base")
    for owner in (study, table):  # the study's base, then the experiment's, win over the sweep file's
        if "base" in owner:
            base = source.parent / _path(owner["base"], f"{where}.base" if owner is table else f"{source}: base")
    if base is None:
        raise ConfigError(f"{where}: base: missing (give the study a base config, e.g. base = \"../tiny.toml\")")
    doc = {"name": name, "base": str(base.resolve()),
           "set": {**flatten(_table(study.get("set", {}), f"{source}: set")),
                   **flatten(_table(sweep.get("set", {}), f"{where}: the sweep file's set")),
                   **flatten(_table(table.get("set", {}), f"{where}.set"))}}
    for key in ("grid", "include"):
        if key in table or key in sweep:
            doc[key] = table.get(key, sweep.get(key))
    for owner in (sweep, study, table):  # the experiment's seeds, then the study's, then the sweep file's
        if "seeds" in owner:
            doc["seeds"] = owner["seeds"]
    return doc


def load_study(path: str | Path, out: str | Path = "runs") -> Study:
    """Read a study file into its experiments (every run validated as ``load_sweep`` does).

    Bad input raises ConfigError with one line naming the file, the experiment and the key.
    """
    source = Path(path)
    doc = read_toml(source)
    known_keys(doc, STUDY_KEYS, str(source), "a study file")
    tables = _table(doc.get("experiments", {}), f"{source}: experiments")
    if not tables:
        raise ConfigError(f"{source}: experiments: none (give [experiments.NAME] tables, e.g. [experiments.plateau_vs_n])")
    name = format_value(doc.get("name", source.stem))
    folder = Path(out) / name
    experiments = {}
    for exp, table in tables.items():
        if format_value(exp) != exp:
            raise ConfigError(f"{source}: experiments.{exp}: use letters, digits, '.', '_' or '-' in an experiment's name")
        sweep_doc = experiment_doc(doc, exp, _table(table, f"{source}: experiments.{exp}"), source)
        experiments[exp] = sweep_from_doc(sweep_doc, source, folder, where=f"{source}: experiments.{exp}")
    check_pool_keys(doc, str(source))
    return Study(name, source, folder, experiments, doc.get("runs_per_gpu", 1), doc.get("pack"))


def shape_key(config: Config) -> tuple:
    """What sets the cost of a training step and of a probe (model, batch, world sizes)."""
    m, w = config.model, config.world
    return (m.n_layers, m.d_model, m.n_heads, m.d_mlp, config.train.batch_size, config.eval.batch_size,
            w.n_first_names, w.n_middle_names, w.n_last_names, w.n_cities, w.n_universities, w.n_majors,
            w.n_companies, w.year_max - w.year_min)


def measure_rates(config: Config, device, steps: int = 6) -> dict[str, float]:
    """Seconds of one training step, of probing one biography, and of building a run's world,
    measured on ``device`` with a fresh model of ``config``'s shape on real batches of its world."""
    import torch

    from trainer.batches import Biographies
    from trainer.loop import make_optimizer, make_train_step
    from trainer.model import Transformer
    from trainer.world import build_world

    started = time.perf_counter()
    world = build_world(config.world, config.seed)
    setup_s = time.perf_counter() - started
    bios = Biographies(world, device)
    model = Transformer(config.model, len(world.vocab), world.seq_len).to(device)
    step = make_train_step(model, make_optimizer(model, config), config, device, bios.pad)
    gen = torch.Generator(device).manual_seed(0)

    def batch(size: int) -> torch.Tensor:
        who = torch.randint(0, world.n, (size,), generator=gen, device=device)
        return bios.assemble(who, *bios.random_layout(who, gen)).tokens

    tokens = [batch(config.train.batch_size) for _ in range(steps + 1)]
    step(tokens[0]).item()  # the first step pays for allocation (and compilation where it compiles)
    started = time.perf_counter()
    for t in tokens[1:]:
        loss = step(t)
    loss.item()
    step_s = (time.perf_counter() - started) / steps
    probe = batch(config.eval.batch_size)[:, :-1]
    with torch.no_grad():
        model(probe)
        started = time.perf_counter()
        for _ in range(steps):
            out = model(probe)
        out.sum().item()
    probe_s = (time.perf_counter() - started) / steps / config.eval.batch_size
    return {"step_s": step_s, "probe_s": probe_s, "setup_s": setup_s}


def process_start_seconds() -> float:
    """Seconds for a fresh Python to import the trainer: what each run's (or pack's) process
    pays before its setup (trainer/pool.py starts one per run)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import trainer.run, trainer.loop"], check=True, capture_output=True)
    return time.perf_counter() - started


def estimate_seconds(runs: list[RunSpec], device, progress=None) -> dict[str, float]:
    """Estimated seconds of each run alone on ``device``: its process's start, its setup, its
    training steps and its probes (``trainer.plan.n_probes``), at rates measured once per shape
    (``measure_rates``); a patched run pays for its reference's forward pass too (about a third
    of a step)."""
    from trainer.plan import n_probes

    start_s = process_start_seconds()
    rates: dict[tuple, dict[str, float]] = {}
    seconds = {}
    for run in runs:
        c = run.config
        key = shape_key(c)
        if key not in rates:
            rates[key] = measure_rates(c, device)
            if progress:
                progress(f"  measured {c.model.n_layers} layers x d_model {c.model.d_model}, batch "
                         f"{c.train.batch_size}: {rates[key]['step_s'] * 1e3:.1f} ms a step")
        r = rates[key]
        patched = 4 / 3 if c.patch.reference else 1.0
        seconds[run.name] = start_s + r["setup_s"] + patched * (c.train.steps * r["step_s"] + n_probes(c) * r["probe_s"])
    return seconds
