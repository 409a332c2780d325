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


def stopped_run(tmp_path, name="run", resume_state=True):
    """A prepared QUICK run whose store holds one evaluation and says it was interrupted (as
    the loop leaves it), with a resume state on disk or not; nothing trained."""
    import numpy as np

    import logstore

    config, out = quick_run(tmp_path, name)
    n = 16
    writer = logstore.RunWriter.create(out / logstore.STORE_NAME, individual=np.arange(n), split=np.full(n, "train"),
                                       rank=np.arange(n), baseline=np.ones(6), n_layers=2, n_heads=2,
                                       config=config.to_dict(), package_version="test", fsync=False)
    loss = np.ones((n, 6), np.float32)
    writer.append_eval(0, loss=loss, correct=loss < 0, top_prob=loss, entropy=loss, exposures=np.zeros(n, np.int32),
                       attn_name_to_name=np.zeros((2, 2)), attn_value_to_name=np.zeros((2, 2)), attn_sharpness=np.zeros((2, 2)))
    writer.append_train(np.arange(1, 5), np.ones(4), np.ones(4))
    writer.close("failed", reason="interrupted at step 4; continue with --resume")
    if resume_state:
        (out / "checkpoints").mkdir(exist_ok=True)
        (out / "checkpoints" / "resume.safetensors").write_bytes(b"not read: the checks come first")
    return config, out


@functools.cache
def small_world_config(**world):
    from trainer.config import from_dict

    base = {"n_individuals": 300, "n_heldout": 50, "n_finetune": 20, "n_cities": 40, "n_universities": 20,
            "n_majors": 15, "n_companies": 30, "n_first_names": 40, "n_middle_names": 40, "n_last_names": 40}
    return from_dict({"world": {**base, **world}, "model": {"preset": "tiny"}})
