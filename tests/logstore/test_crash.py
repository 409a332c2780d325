"""logstore under fire: a writer SIGKILLed at random moments, and a reader beside a writer.

Both run the writer in another process (a small script written to tmp_path), like the
trainer; the test process only reads, as an analysis notebook would.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from logstore import StoreError, open_run

REPO = Path(__file__).resolve().parents[2]
N, DENSE, LAYERS, HEADS = 2000, 512, 2, 2

# The writer process: creates the run or resumes it from its last checkpoint, then appends
# evaluations 10, 20, ... up to 10 * rows (all facts at every fourth one, else the dense
# ones), a block of ten training steps with each, and a checkpoint every few evaluations
# (written after a flush, as the trainer does). Metrics are a function of the step only.
WRITER = r"""
import os, sys, time
import numpy as np
from logstore import RunWriter

N, DENSE, LAYERS, HEADS = {N}, {DENSE}, {LAYERS}, {HEADS}

def evaluation(step):
    i = np.arange(N)[:, None]
    loss = ((step * 7 + i * 13 + np.arange(6) * 31) % 1000 / 100).astype(np.float32)
    if step % 40:
        loss[DENSE:] = np.nan
    attn = np.full((LAYERS, HEADS), step, np.float32)
    return dict(loss=loss, correct=loss < 3, top_prob=loss / 10, entropy=loss * 2,
                exposures=((step + np.arange(N)) % 50).astype(np.int32),
                attn_name_to_name=attn, attn_value_to_name=-attn, attn_sharpness=attn + 1)

path, rows, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
checkpoint = path + ".checkpoint"
if os.path.exists(path):
    after = int(open(checkpoint).read()) if os.path.exists(checkpoint) else 0
    w = RunWriter.resume(path, after_step=after)
else:
    split = np.where(np.arange(N) < 1500, "train", "heldout")
    w = RunWriter.create(path, individual=np.arange(N), split=split, rank=np.where(split == "train", np.arange(N), -1),
                         baseline=np.ones(6), n_layers=LAYERS, n_heads=HEADS, config={{"seed": 0}}, package_version="test",
                         chunk_steps=4, chunk_individuals=256)
    after = 0
print("ready", flush=True)
for step in range(after + 10, 10 * rows + 1, 10):
    w.append_eval(step, **evaluation(step))
    w.append_train(np.arange(step - 9, step + 1), np.full(10, step, np.float32), np.full(10, 1e-3, np.float32))
    if step % 30 == 0:
        w.flush()
        with open(checkpoint + ".tmp", "w") as f:
            f.write(str(step))
        os.replace(checkpoint + ".tmp", checkpoint)
    time.sleep(pause)
w.close()
print("done", flush=True)
""".format(N=N, DENSE=DENSE, LAYERS=LAYERS, HEADS=HEADS)


def expected(step: int) -> dict:
    namespace: dict = {}
    exec(WRITER.split("path, rows")[0], namespace)  # the writer's own evaluation()
    return namespace["evaluation"](step)


def start_writer(tmp_path: Path, store: Path, rows: int, pause: float) -> subprocess.Popen:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(script), str(store), str(rows), str(pause)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def check_committed(store: Path, cache: dict) -> int:
    """Open the run; every row it shows must be exactly what was written. Returns the rows."""
    ds = open_run(store)
    steps = ds.step.values
    assert np.all(np.diff(steps) > 0), steps
    np.testing.assert_array_equal(steps, 10 * np.arange(1, len(steps) + 1))  # no gap, no duplicate
    np.testing.assert_array_equal(ds.train_step, np.arange(1, len(ds.train_step) + 1))
    np.testing.assert_array_equal(ds.train_loss, 10 * np.ceil(np.arange(1, len(ds.train_step) + 1) / 10))
    loaded = ds.load()
    for k, step in enumerate(steps):
        want = cache.setdefault(int(step), expected(int(step)))
        for name in ("loss", "top_prob", "entropy", "exposures", "attn_sharpness"):
            np.testing.assert_array_equal(loaded[name].values[k], want[name], err_msg=f"{name} at step {step}")
        evaluated = ~np.isnan(want["loss"])
        np.testing.assert_array_equal(loaded.correct.values[k][evaluated], want["correct"][evaluated])
        assert np.isnan(loaded.correct.values[k][~evaluated]).all()
    return len(steps)


def test_sigkill_at_random_moments_never_loses_or_tears_committed_rows(tmp_path):
    store = tmp_path / "run" / "metrics.zarr"
    store.parent.mkdir()
    rng = random.Random(20240601)
    rows, cache, kills = 48, {}, 0
    seen = []
    for _ in range(5):
        proc = start_writer(tmp_path, store, rows, pause=0.0)
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        time.sleep(rng.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += proc.returncode == -signal.SIGKILL
        checkpoint = store.with_name(store.name + ".checkpoint")
        flushed = int(checkpoint.read_text()) // 10 if checkpoint.exists() else 0
        committed = check_committed(store, cache)
        assert committed >= flushed  # what was flushed before the checkpoint survives
        # a writer that finished before the kill (a fast, quiet machine) closed its store
        assert open_run(store).attrs["status"] == ("running" if proc.returncode == -signal.SIGKILL else "complete")
        seen.append(committed)
    assert kills >= 3, "the writer finished before it could be killed: make it slower"
    proc = start_writer(tmp_path, store, rows, pause=0.0)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "done" in out, err
    assert check_committed(store, cache) == rows
    ds = open_run(store)
    assert ds.attrs["status"] == "complete" and ds.attrs["committed_steps"] == rows
    assert not list(store.rglob("*.partial")), "temporary files left behind"
    print("committed rows seen after each kill:", seen)


def test_a_run_reads_while_another_process_writes_it(tmp_path):
    store = tmp_path / "metrics.zarr"
    rows, cache = 30, {}
    proc = start_writer(tmp_path, store, rows, pause=0.03)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    counts = []
    while proc.poll() is None:
        try:
            counts.append(check_committed(store, cache))
        except StoreError as err:  # never expected: the store is always readable
            pytest.fail(f"reading a store being written failed: {err}")
        time.sleep(0.05)
    assert proc.returncode == 0, proc.stderr.read()
    counts.append(check_committed(store, cache))
    assert counts == sorted(counts), counts  # committed rows only ever grow
    assert counts[-1] == rows and any(0 < c < rows for c in counts), counts
