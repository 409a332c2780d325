"""A tiny simulated sweep in real stores, for the report tests (no training needed).

Uniform runs at four N with plateau ends growing as N^0.81; power-law runs at three alphas;
a 2 x 2 warm-up grid; a fine-tuning run (old individuals forget, new ones are learned);
a run still training (partly committed), a failed one, and names and config text that need
escaping.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from phasefit.simulate import set_config, simulate, to_store

EVIL_NAME = "warm<img src=x onerror=alert(1)>&"
EVIL_TEXT = "</script><b>bold</b>&amp;"
STEPS = 3000


def _plateau_end(n: int) -> float:
    return 4 * 0.43 * n**0.81  # four times the study's fit, so both lines show


def _run(n, seed=0, alpha=0.0, t2=None, accuracy=0.9, kind=None, n_heldout=40, n_evals=80, **sampling):
    t2 = t2 or _plateau_end(n)
    ds = simulate(n_individuals=n, n_heldout=n_heldout, n_steps=STEPS, n_evals=n_evals, t1=t2 / 6, t2=t2,
                  t3=min(4 * t2, 0.9 * STEPS), final_accuracy=accuracy, alpha=alpha, seed=seed, sampling_kind=kind,
                  n_layers=2, n_heads=2)
    if sampling:
        config = json.loads(ds.attrs["config"])
        config["sampling"].update(sampling)
        set_config(ds, config)
    return ds


def finetune_run(n_old: int = 200, n_new: int = 60, seed: int = 0):
    """A fine-tuning run: the old (train split) individuals start known and are forgotten within
    about a hundred steps; the new (finetune split) ones are learned slowly."""
    ds = _run(n_new, seed=seed, t2=150, accuracy=0.6, n_heldout=n_old, kind="finetune")
    rng = np.random.default_rng(seed)
    old = ds["split"].values == "heldout"
    steps = ds["step"].values.astype(float)
    decay = np.exp(-steps / 100)[:, None, None]
    baseline = ds["baseline"].values[None, None, :]
    loss = ds["loss"].values
    loss[:, old] = (0.1 + (baseline - 0.1) * 0.8 * (1 - decay)) * rng.lognormal(0, 0.2, loss[:, old].shape)
    ds["correct"].values[:, old] = rng.random(loss[:, old].shape) < 0.15 + 0.75 * decay
    split = np.where(old, "train", "finetune")
    rank = np.where(old, np.cumsum(old) - 1, -1)
    ds = ds.assign_coords(split=("individual", split), rank=("individual", rank))
    config = json.loads(ds.attrs["config"])
    config["world"].update(n_individuals=n_old, n_heldout=0, n_finetune=n_new)
    config["sampling"].update(replay_weight=0.25)
    config["train"].update(init_from="runs/base")
    set_config(ds, config)
    return ds


def make_sweep(root: Path, full: bool = False) -> Path:
    """Write the sweep under ``root``; returns root.

    The small sweep (the tests') has every kind of page and figure: uniform runs at three N
    (a scaling fit), one power-law run, two warm-up runs (one with a name and config text
    that need escaping), a fine-tuning run, a failed run, a running one and an unreadable
    one. ``full`` adds two alphas (a fitted alpha optimum) and completes the warm-up grid.
    """
    root = Path(root)
    for n in (200, 400, 800):
        to_store(_run(n), root / f"uniform-N{n}")
    alphas = ((0.5, 0.7, 0.88), (1.0, 0.6, 0.8), (1.5, 0.9, 0.65)) if full else ((1.0, 0.6, 0.8),)
    for alpha, factor, accuracy in alphas:
        to_store(_run(400, alpha=alpha, t2=factor * _plateau_end(400), accuracy=accuracy), root / f"alpha{alpha:g}-N400")
    grid = ((50, 1), (50, 2), (100, 1), (100, 2)) if full else ((50, 1), (100, 2))
    for individuals, epochs in grid:
        name = EVIL_NAME if (individuals, epochs) == (100, 2) else f"warmup{individuals}x{epochs}"
        ds = _run(400, t2=_plateau_end(400) * (0.5 + 0.1 * epochs), accuracy=0.8 + individuals / 1000 + epochs / 100,
                  kind="warmup", warmup_individuals=individuals, warmup_epochs=float(epochs), seed=individuals + epochs)
        if name == EVIL_NAME:
            config = json.loads(ds.attrs["config"])
            config["model"]["preset"] = EVIL_TEXT
            set_config(ds, config)
        to_store(ds, root / "warmup" / name)
    to_store(finetune_run(), root / "finetune")
    to_store(_run(1600, n_evals=40), root / "uniform-N1600", status="failed")
    to_store(_run(400, seed=1), root / "live", status="running", committed=30)
    broken = to_store(_run(100, n_evals=20), root / "broken")
    for chunk in (broken / "metrics.zarr" / "loss").rglob("c*"):
        if chunk.is_file():
            chunk.write_bytes(b"garbage")
    return root
