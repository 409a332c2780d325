"""What the tests share: the repository's paths, a fresh ``phasefit`` process, small runs."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny.toml"


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess:
    """Run ``phasefit ARGS`` in a fresh interpreter, as a user would."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "phasefit.cli", *args], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"phasefit {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


# A very small run: enough to exercise every part of the loop in seconds.
QUICK = ["world.n_individuals=40", "world.n_heldout=10", "model.n_layers=2", "model.d_model=32", "model.n_heads=2",
         "model.d_mlp=64", "train.steps=40", "train.batch_size=8", "eval.n_evals=12", "eval.attention_probe=4",
         "train.n_checkpoints=3"]


def quick_run(tmp_path: Path, name: str, *extra: str):
    """The config of a QUICK run (plus ``extra`` overrides) and its prepared folder."""
    from trainer.config import load_config
    from trainer.run import prepare_run

    config = load_config(TINY, QUICK + list(extra))
    out = tmp_path / name
    prepare_run(config, out)
    return config, out


@functools.cache
def small_world_config(**world):
    from trainer.config import from_dict

    base = {"n_individuals": 300, "n_heldout": 50, "n_finetune": 20, "n_cities": 40, "n_universities": 20,
            "n_majors": 15, "n_companies": 30, "n_first_names": 40, "n_middle_names": 40, "n_last_names": 40}
    return from_dict({"world": {**base, **world}, "model": {"preset": "tiny"}})
