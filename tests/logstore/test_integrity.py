"""A store whose chunks were lost, misplaced or truncated is an error naming the array and the
steps, never data: the writer records the checksum of every chunk each commit wrote, and the
readers tell "never written" (facts not evaluated) from "lost" and "misplaced"."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from logstore import RunWriter, StoreError, list_runs, open_run, population_curves
from logstore.durable import DurableStore
from tests.helpers import ROOT, run_cli

N, DENSE, STEPS = 600, 256, 24  # the first 256 individuals evaluated at every step, all at every eighth
CHUNKS = dict(chunk_steps=4, chunk_individuals=128)


def evaluation(step: int) -> dict:
    i = np.arange(N)[:, None]
    loss = ((step * 7 + i * 13 + np.arange(6) * 31) % 1000 / 100).astype(np.float32)
    if (step // 10) % 8:
        loss[DENSE:] = np.nan
    return dict(loss=loss, correct=loss < 3, top_prob=loss / 10, entropy=loss * 2,
                exposures=((step + np.arange(N)) % 50 + 1).astype(np.int32),
                attn_name_to_name=np.full((1, 2), step, np.float32), attn_value_to_name=np.zeros((1, 2), np.float32),
                attn_sharpness=np.ones((1, 2), np.float32))


def write_run(run: Path, rows: int = STEPS) -> Path:
    split = np.where(np.arange(N) < 500, "train", "heldout")
    writer = RunWriter.create(run / "metrics.zarr", individual=np.arange(N), split=split,
                              rank=np.where(split == "train", np.arange(N), -1), baseline=np.full(6, 5.0), n_layers=1,
                              n_heads=2, config={"seed": 0, "train": {"steps": 10 * rows}}, package_version="test",
                              fsync=False, **CHUNKS)
    for k in range(rows):
        writer.append_eval(10 * k, **evaluation(10 * k))
    writer.append_train(np.arange(1, 10 * rows + 1), np.ones(10 * rows, np.float32), np.full(10 * rows, 1e-3, np.float32))
    writer.close()
    return run


@pytest.fixture
def run(tmp_path):
    return write_run(tmp_path / "run")


def read_all(run: Path) -> None:
    ds = open_run(run)
    for name in ("loss", "correct", "top_prob", "entropy", "exposures", "train_loss", "lr"):
        ds[name].values  # noqa: B018 - every chunk read


def test_an_intact_store_reads_and_records_a_checksum_per_chunk(run):
    read_all(run)
    attrs = json.loads((run / "metrics.zarr" / "zarr.json").read_text())["attributes"]
    recorded = attrs["chunk_checksums"]
    on_disk = {p.parent.name: set() for p in (run / "metrics.zarr").glob("*/c.*")}
    for p in (run / "metrics.zarr").glob("*/c.*"):
        on_disk[p.parent.name].add(p.name)
    assert {k: set(v) for k, v in recorded.items()} == on_disk
    assert "chunk_checksums" not in open_run(run).attrs  # bookkeeping, not a property of the run
    # chunks of individuals never evaluated at those steps were never written, and read as NaN
    assert not (run / "metrics.zarr" / "loss" / "c.1.2.0").exists()
    assert np.isnan(open_run(run).loss.values[4:8, 256:]).all()


@pytest.mark.parametrize("array, chunk, steps", [
    ("correct", "c.2.0.0", "80..110"),
    ("loss", "c.5.1.0", "200..230"),
    ("exposures", "c.3.0", "120..150"),
])
def test_a_lost_chunk_is_an_error_naming_the_array_and_steps(run, array, chunk, steps):
    (run / "metrics.zarr" / array / chunk).unlink()
    with pytest.raises(StoreError, match=rf"array '{array}' is missing its chunk {chunk} \(steps {steps}.*\)"):
        read_all(run)


def test_a_lost_training_chunk_is_an_error(run):
    (run / "metrics.zarr" / "train_loss" / "c.0").unlink()
    with pytest.raises(StoreError, match=r"array 'train_loss' is missing its chunk c.0 \(training steps 1..240\)"):
        open_run(run).train_loss.values


@pytest.mark.parametrize("array, source, target", [("correct", "c.0.0.0", "c.2.0.0"), ("loss", "c.1.0.0", "c.4.1.0")])
def test_a_misplaced_chunk_is_an_error_although_its_own_checksum_is_valid(run, array, source, target):
    store = run / "metrics.zarr" / array
    shutil.copyfile(store / source, store / target)
    with pytest.raises(StoreError, match=rf"array '{array}' holds a chunk {target} .* not the one written there"):
        read_all(run)


def test_a_truncated_chunk_is_an_error(run):
    path = run / "metrics.zarr" / "loss" / "c.2.0.0"
    path.write_bytes(path.read_bytes()[:-9])
    with pytest.raises(StoreError, match="array 'loss'"):
        read_all(run)


def test_the_population_curve_and_detect_report_a_lost_chunk_in_one_line(run):
    (run / "metrics.zarr" / "correct" / "c.2.0.0").unlink()
    with pytest.raises(StoreError, match="array 'correct'"):
        population_curves(open_run(run))
    proc = run_cli("detect", str(run), "--n-boot", "0")
    assert proc.returncode == 1
    assert "unreadable store" in proc.stdout and "array 'correct'" in proc.stdout and "Traceback" not in proc.stderr


def test_a_store_from_before_checksums_still_reads(run):
    meta = run / "metrics.zarr" / "zarr.json"
    doc = json.loads(meta.read_text())
    del doc["attributes"]["chunk_checksums"]
    meta.write_text(json.dumps(doc))
    (run / "metrics.zarr" / "loss" / "c.2.0.0").unlink()  # undetectable there: read as not evaluated
    assert np.isnan(open_run(run).loss.values[8:12, :128]).all()
    assert list_runs(run.parent)["status"].tolist() == ["complete"]


def test_a_resumed_store_keeps_its_checksums_true(tmp_path):
    run = write_run(tmp_path / "run")
    RunWriter.resume(run / "metrics.zarr", after_step=105, fsync=False).close()
    ds = open_run(run)
    assert ds.sizes["step"] == 11
    read_all(run)
    recorded = json.loads((run / "metrics.zarr" / "zarr.json").read_text())["attributes"]["chunk_checksums"]
    assert sorted(recorded["loss"]) == sorted(p.name for p in (run / "metrics.zarr" / "loss").glob("c.*"))


WRITER = """
import sys, time
import numpy as np
sys.path.insert(0, {root!r})
from tests.logstore.test_integrity import evaluation, write_run
from pathlib import Path
from logstore import RunWriter
run = Path(sys.argv[1])
w = RunWriter.resume(run / "metrics.zarr")
print("ready", flush=True)
for k in range(5, 40):
    w.append_eval(10 * k, **evaluation(10 * k))
    w.flush()
    time.sleep(0.01)
w.close()
"""


def test_reading_while_a_run_writes_never_raises_a_false_alarm(tmp_path):
    run = write_run(tmp_path / "run", rows=5)
    proc = subprocess.Popen([sys.executable, "-c", WRITER.format(root=str(ROOT)), str(run)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    reads = 0
    while proc.poll() is None:
        read_all(run)  # the chunk being rewritten changes under the reader: never an error
        reads += 1
        time.sleep(0.005)
    assert proc.returncode == 0, proc.stderr.read()
    assert reads >= 3 and open_run(run).sizes["step"] == 40


def test_a_commit_is_one_write_that_a_reader_or_a_kill_never_sees_half_done(tmp_path, monkeypatch):
    # The run is read each time its writer replaces the group's zarr.json (what a reader opening
    # then, or a writer killed then, finds): every such state must read without error. The writer
    # is held at its commit of row 5 until rows 6..8 are queued, so they make one commit: it
    # rewrites block 1's chunks and moves the live block on, where a commit count written before
    # its checksums made a correct store read as damaged.
    run = write_run(tmp_path / "run", rows=5)
    put, holding, queued = DurableStore._put, threading.Event(), threading.Event()
    problems, reads = [], []

    def put_then_read(self, key, value):
        put(self, key, value)
        if key == "zarr.json":
            try:
                read_all(run)
                reads.append(open_run(run).sizes["step"])
            except StoreError as err:
                problems.append(str(err))
            if appending.is_set():
                holding.set()
                queued.wait(10)

    appending = threading.Event()
    monkeypatch.setattr(DurableStore, "_put", put_then_read)
    writer = RunWriter.resume(run / "metrics.zarr", fsync=False)
    appending.set()
    writer.append_eval(50, **evaluation(50))
    assert holding.wait(10)
    for k in range(6, 9):
        writer.append_eval(10 * k, **evaluation(10 * k))
    queued.set()
    writer.close()
    assert problems == []
    assert 6 in reads and reads[-1] == 9  # read at each commit, the two-block one included
    read_all(run)

def test_a_resume_over_a_damaged_store_changes_nothing_in_it(tmp_path):
    run = write_run(tmp_path / "run")
    RunWriter.resume(run / "metrics.zarr", fsync=False).close("failed", reason="diverged at step 230")
    path = run / "metrics.zarr" / "loss" / "c.5.0.0"  # the last block: a resumed writer reads it back
    path.write_bytes(path.read_bytes()[:-9] + b"123456789")
    with pytest.raises(StoreError, match="array 'loss'"):
        RunWriter.resume(run / "metrics.zarr", fsync=False)
    attrs = json.loads((run / "metrics.zarr" / "zarr.json").read_text())["attributes"]
    assert attrs["status"] == "failed" and attrs["reason"] == "diverged at step 230"  # not flipped to running
    with pytest.raises(StoreError, match="array 'loss'"):  # again: the failed attempt released the lock
        RunWriter.resume(run / "metrics.zarr", fsync=False)
