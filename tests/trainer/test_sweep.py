"""Sweeps: files into runs, a local pool and a real Dask cluster, restarts, failures."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import logstore
from tests.helpers import ROOT, TINY, run_cli
from trainer.config import ConfigError
from trainer.pool import run_sweep
from trainer.sweep import load_sweep

# Micro runs (as tests/test_trainer.py's QUICK): seconds each, most of it starting Python.
MICRO = f"""
base = "{TINY}"
[set]
"world.n_individuals" = 40
"world.n_heldout" = 10
model = {{ d_model = 32, n_heads = 2, d_mlp = 64 }}
train.steps = 40
train.batch_size = 8
train.n_checkpoints = 3
eval = {{ n_evals = 12, attention_probe = 4 }}
"""
VARIABLES = ("loss", "correct", "top_prob", "entropy", "exposures", "train_loss", "lr", "attn_name_to_name",
             "attn_value_to_name", "attn_sharpness")


def write(tmp_path, name, tables="", top=""):
    """A sweep file of micro runs: ``top`` adds top-level keys, ``tables`` adds tables after [set]."""
    path = tmp_path / name
    path.write_text(top + "\n" + MICRO + tables)
    return path


def assert_same_stores(a, b):
    da, db = logstore.open_run(a), logstore.open_run(b)
    assert da.attrs["status"] == db.attrs["status"] == "complete"
    np.testing.assert_array_equal(da.step.values, db.step.values)
    for name in VARIABLES:
        np.testing.assert_array_equal(da[name].values, db[name].values, err_msg=f"{a} {b} {name}")


def test_a_sweep_file_becomes_named_validated_runs(tmp_path):
    path = write(tmp_path, "study.toml", top="seeds = [0, 1]", tables="""
[grid]
"world.n_individuals" = [40, 80]
schedule = [{ label = "uniform", "sampling.kind" = "uniform" },
            { "sampling.kind" = "power_law", "sampling.alpha" = 0.6 }]
[[include]]
label = "pretrain"
[[include]]
label = "tuned"
"sampling.kind" = "finetune"
"world.n_finetune" = 10
"sampling.replay_weight" = 0.5
"train.init_from" = "@pretrain"
""")
    sweep = load_sweep(path, tmp_path / "runs")
    names = [r.name for r in sweep.runs]
    assert names == ["N40-uniform-seed0", "N40-uniform-seed1", "N40-power_law-alpha0.6-seed0",
                     "N40-power_law-alpha0.6-seed1", "N80-uniform-seed0", "N80-uniform-seed1",
                     "N80-power_law-alpha0.6-seed0", "N80-power_law-alpha0.6-seed1", "pretrain-seed0",
                     "pretrain-seed1", "tuned-seed0", "tuned-seed1"]
    run = sweep.run("N80-power_law-alpha0.6-seed1")
    c = run.config
    assert (c.world.n_individuals, c.sampling.kind, c.sampling.alpha, c.seed) == (80, "power_law", 0.6, 1)
    assert (c.model.d_model, c.train.steps, c.name) == (32, 40, "study")  # [set] and the base reach every run
    assert run.path == tmp_path / "runs" / "study" / run.name
    # A reference to another run of the sweep: the same seed's pretrain, which must finish first.
    tuned = sweep.run("tuned-seed1")
    assert tuned.needs == ["pretrain-seed1"]
    assert tuned.config.train.init_from == str((tmp_path / "runs" / "study" / "pretrain-seed1").resolve())


@pytest.mark.parametrize("extra, message", [
    ("[grid]\n\"world.n_individualz\" = [1]", "unknown key 'world.n_individualz'"),
    ("[grid]\n\"sampling.alpha\" = [0.5, -1]", "[alpha-1-seed0]: sampling.alpha must be >= 0"),
    ("[grid]\nsize = [4, 5]", "grid.size[0]: expected a table of overrides"),
    ("[grid]\n\"train.lr\" = []", "grid.train.lr: expected a non-empty list"),
    ("seeds = [1, 1]", "seeds: [1, 1] repeats a seed"),
    ("seeds = 3", "seeds: expected a non-empty list of integers"),
    ("[[include]]\n\"train.init_from\" = \"@nowhere\"", "train.init_from: no other run named nowhere"),
    ("[[include]]\n\"sampling.alpha\" = 0.5\n[[include]]\nlabel = \"alpha0.5\"", "give them distinct 'label's"),
    ("workers = 3", "unknown key 'workers'"),
    ("[[include]]\nlabel = \"a\"\n\"train.init_from\" = \"@b\"\n[[include]]\nlabel = \"b\"\n\"train.init_from\" = \"@a\"",
     "in a circle (a-seed0 -> b-seed0 -> a-seed0)"),
    ("seeds = [-1]", "[seed-1]: seed must be between 0 and 2**63 - 1, not -1"),
    ("runs_per_gpu = true", "runs_per_gpu: expected an integer >= 1, got True"),
    ("name = \"..\"", "name must be a plain name (it names the run's folder), not '..'"),
    ("grid = 5", "grid: expected a table of axes, got 5"),
])
def test_bad_sweep_files_name_the_file_run_and_key(tmp_path, extra, message):
    top = extra.startswith(("seeds", "workers", "runs_per_gpu", "name", "grid ="))
    path = write(tmp_path, "bad.toml", top=extra if top else "", tables="" if top else extra)
    with pytest.raises(ConfigError) as err:
        load_sweep(path, tmp_path / "runs")
    assert str(path) in str(err.value) and message in str(err.value)


def test_a_base_that_is_not_a_path_is_named(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("base = 5\n")
    with pytest.raises(ConfigError, match="base: expected the path of a config, got 5"):
        load_sweep(path, tmp_path / "runs")


def test_a_run_outside_the_sweep_is_checked_when_the_sweep_is_read(tmp_path):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.toml").write_text(TINY.read_text())
    for start, message in ((tmp_path / "nowhere", "not a run folder"), (unfinished, "the run has not finished")):
        path = write(tmp_path, "outside.toml", tables=f'[[include]]\n"train.init_from" = "{start}"')
        with pytest.raises(ConfigError) as err:
            load_sweep(path, tmp_path / "runs")
        assert str(path) in str(err.value) and f"train.init_from = {start}: {message}" in str(err.value)



def test_cli_reports_a_bad_sweep_in_one_line(tmp_path):
    path = write(tmp_path, "bad.toml", "[grid]\n\"model.n_heads\" = [3]\n")
    proc = run_cli("sweep", str(path), "--out", str(tmp_path / "runs"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "model.n_heads must divide model.d_model" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_a_device_or_out_that_cannot_be_used_writes_no_run_folder(tmp_path):
    """The device (and a --scheduler's cluster) is checked before any run folder is written."""
    path = write(tmp_path, "pair.toml", top="seeds = [3, 4]")
    proc = run_cli("sweep", str(path), "--out", str(tmp_path / "runs"), "--device", "cuda:99")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "--device cuda:99" in proc.stderr
    assert not (tmp_path / "runs" / "pair").exists()
    (tmp_path / "a_file").write_text("results\n")
    proc = run_cli("sweep", str(path), "--out", str(tmp_path / "a_file"), "--device", "cpu")
    a_file = tmp_path / "a_file"
    assert proc.returncode == 2 and proc.stderr == f"phasefit: error: --out {a_file}: {a_file} is a file, not a folder\n"
    assert (tmp_path / "a_file").read_text() == "results\n"


@pytest.mark.slow
def test_a_dask_cluster_gives_the_same_stores_as_the_local_pool(tmp_path, monkeypatch):
    """The same sweep file on a real dask.distributed LocalCluster (workers declaring a GPU
    resource, so every run is annotated with it) and on the local pool: identical stores."""
    from distributed import LocalCluster

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # same threads both ways: bit-identical CPU arithmetic
    path = write(tmp_path, "pair.toml", top="seeds = [3, 4]")
    local = run_sweep(load_sweep(path, tmp_path / "local"), workers=2, device="cpu", progress=False)
    assert [o.status for o in local] == ["complete", "complete"]
    lines = []
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=True, resources={"GPU": 1},
                      dashboard_address=None) as cluster:
        remote = run_sweep(load_sweep(path, tmp_path / "dask"), scheduler=cluster.scheduler_address,
                           device="cpu", progress=False, echo=lines.append)
    assert [o.status for o in remote] == ["complete", "complete"]
    assert all(o.where.startswith("dask worker tcp://") for o in remote)
    assert any("2 with a GPU resource; each run asks for GPU=1" in line for line in lines)
    for name in ("seed3", "seed4"):
        assert_same_stores(tmp_path / "local" / "pair" / name, tmp_path / "dask" / "pair" / name)
        assert "dask worker" in (tmp_path / "dask" / "pair" / name / "sweep.log").read_text()


@pytest.mark.slow
def test_an_interrupted_sweep_restarts_without_redoing_finished_runs(tmp_path):
    path = write(tmp_path, "three.toml", """
[grid]
length = [{ label = "a" }, { label = "b", "train.steps" = 1000 }, { label = "c" }]
""")
    out = tmp_path / "runs"
    runs = {name: out / "three" / f"{name}-seed0" for name in "abc"}
    cmd = [sys.executable, "-m", "phasefit.cli", "sweep", str(path), "--out", str(out), "--workers", "1",
           "--device", "cpu"]
    # Ctrl-C as in a terminal: a test runner's worker may ignore SIGINT, and its children would inherit that.
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while logstore.committed_train_steps(runs["b"]) < 100 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # to the sweep only, as Ctrl-C would; it stops its runs
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "continue with: phasefit sweep" in output
    a_store = logstore.open_run(runs["a"])
    assert a_store.attrs["status"] == "complete"
    b_store = logstore.open_run(runs["b"])
    assert b_store.attrs["status"] == "failed" and "interrupted" in b_store.attrs["reason"]
    assert (runs["b"] / "checkpoints" / "resume.safetensors").exists()
    assert not (runs["c"] / "metrics.zarr").exists()
    a_stamp = (runs["a"] / "metrics.zarr" / "zarr.json").stat().st_mtime_ns

    proc = run_cli("sweep", str(path), "--out", str(out), "--workers", "1", "--device", "cpu")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 runs: 3 complete (1 already)" in proc.stdout
    assert (runs["a"] / "metrics.zarr" / "zarr.json").stat().st_mtime_ns == a_stamp  # not redone
    assert (runs["a"] / "sweep.log").read_text().count("starting on") == 1
    log_b = (runs["b"] / "sweep.log").read_text()
    assert log_b.count("starting on") == 1 and log_b.count("resuming on") == 1
    b_store = logstore.open_run(runs["b"])
    assert b_store.attrs["status"] == "complete"
    assert list(b_store.train_step.values) == list(range(1, 1001))  # no step lost or repeated
    assert logstore.open_run(runs["c"]).attrs["status"] == "complete"


@pytest.mark.slow
def test_a_run_whose_store_cannot_be_read_is_reported_and_kept(tmp_path):
    """A damaged store may hold a finished run: running the sweep again reports it and
    deletes nothing (it used to be taken for a run killed early, and trained again)."""
    path = write(tmp_path, "one.toml")
    outcomes = run_sweep(load_sweep(path, tmp_path / "runs"), device="cpu", progress=False, echo=lambda _: None)
    assert [o.status for o in outcomes] == ["complete"]
    run = tmp_path / "runs" / "one" / "seed0"
    meta = run / "metrics.zarr" / "zarr.json"
    meta.write_text(meta.read_text()[:60])  # torn metadata
    files = sorted(run.rglob("*"))
    again = run_sweep(load_sweep(path, tmp_path / "runs"), device="cpu", progress=False, echo=lambda _: None)
    assert again[0].status == "failed" and f"{run / 'metrics.zarr'}: unreadable" in again[0].message
    assert "move the run away" in again[0].message
    assert sorted(run.rglob("*")) == files and len(meta.read_text()) == 60


@pytest.mark.slow  # trains a model
def test_a_failed_run_is_reported_and_the_others_go_on(tmp_path):
    """One run diverges: it is reported, the runs that do not need it complete, the run that
    fine-tunes from it is not started; the fine-tuning run of the good one starts from its weights."""
    # Every run has the fine-tuning individuals in its world (the pretrained ones never see
    # them), so that the fine-tuning runs continue in the very world their weights come from.
    path = write(tmp_path, "mixed.toml", """
"world.n_finetune" = 10
[[include]]
label = "good"
[[include]]
label = "bad"
"train.lr" = 1e30
[[include]]
label = "tuned"
"sampling.kind" = "finetune"
"train.init_from" = "@good"
[[include]]
label = "tuned_bad"
"sampling.kind" = "finetune"
"train.init_from" = "@bad"
""")
    out = tmp_path / "runs"
    proc = run_cli("sweep", str(path), "--out", str(out), "--workers", "2", "--device", "cpu")
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any("failed" in l and "bad-seed0" in l and "training loss became nan at step" in l for l in lines)
    assert any("tuned_bad-seed0" in l and "needs run bad-seed0, which did not complete" in l for l in lines)
    assert "4 runs: 2 complete, 2 failed" in proc.stdout
    folder = out / "mixed"
    for name in ("good-seed0", "tuned-seed0"):
        assert logstore.open_run(folder / name).attrs["status"] == "complete"
    tuned = logstore.open_run(folder / "tuned-seed0")
    assert json.loads(tuned.attrs["config"])["train"]["init_from"] == str((folder / "good-seed0").resolve())
    # Started from the trained weights: its first evaluation is not a fresh model's loss.
    fresh = logstore.open_run(folder / "good-seed0")
    old = tuned.split.values == "train"
    assert float(tuned.loss.isel(step=0).values[old].mean()) < float(fresh.loss.isel(step=0).values.mean()) - 1
    assert not (folder / "tuned_bad-seed0" / "metrics.zarr").exists()


STUDY = sorted((ROOT / "configs" / "sweeps").glob("*.toml"))


def test_the_study_has_one_sweep_file_per_experiment():
    assert {p.stem for p in STUDY} == {"plateau_vs_n", "alpha", "celebrities", "warmup", "hallucination", "finetune",
                                        "patching", "sequential"}


@pytest.mark.parametrize("path", STUDY, ids=lambda p: p.stem)
def test_the_study_sweep_files_are_valid_and_say_what_they_cost(path, tmp_path):
    sweep = load_sweep(path, tmp_path)
    text = path.read_text()
    assert f"# {len(sweep.runs)} runs" in text or f"{len(sweep.runs)} runs" in text  # the comment counts them
    assert "# GPU time:" in text
    assert all(r.config.model.d_model == 512 for r in sweep.runs)  # the paper preset
