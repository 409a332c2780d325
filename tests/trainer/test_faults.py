"""Faults of the machine and of the input: a read-only or full disk, a damaged reference, a
NUL byte or deep nesting in a config, a signal to a sweep. Each ends in one line and a
non-zero exit, and nothing already written is lost. The fast tests build stores with
logstore.RunWriter directly; the ones that train are marked slow."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

import logstore
from tests.helpers import QUICK, ROOT, TINY, quick_run, run_cli, stopped_run
from phasefit.cli import main as cli
from trainer import checkpoints, loop, pool
from trainer.config import ConfigError, load_config, read_toml
from trainer.run import how_to_continue, prepare_run, run_state, train_folder
from trainer.sweep import load_sweep

NO_SPACE = "Error while serializing: I/O error: No space left on device (os error 28)"  # as safetensors says it


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def snapshot(folder: Path) -> dict:
    """Every file and folder under ``folder``, with each file's contents and time of change."""
    return {p.relative_to(folder): (p.stat().st_mtime_ns, p.read_bytes()) if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


def can_write(folder: Path) -> bool:
    probe = folder / ".probe"
    try:
        probe.touch()
    except OSError:
        return False
    probe.unlink()
    return True


@contextmanager
def read_only(folder: Path):
    """``folder`` made read-only: by its mode bits where they stop this user; as root, where they
    do not, by a read-only bind mount over it (or the test is skipped, saying why)."""
    paths = [folder, *folder.rglob("*")]
    modes = {p: p.stat().st_mode for p in paths}
    for p in paths:
        p.chmod(modes[p] & ~0o222)
    mounted = False
    try:
        if can_write(folder):  # root: chmod does not stop its writes
            mounted = subprocess.run(["mount", "--bind", folder, folder], capture_output=True, check=False).returncode == 0
            if not mounted or subprocess.run(["mount", "-o", "remount,bind,ro", folder], capture_output=True, check=False).returncode:
                pytest.skip("running as root, where chmod does not stop writes, and read-only bind mounts are not "
                            "allowed here")
        assert not can_write(folder)
        yield
    finally:
        if mounted:
            subprocess.run(["umount", folder], check=True)
        for p in reversed(paths):
            p.chmod(modes[p])


# ---------------------------------------------------------------- read-only run folders


@pytest.mark.parametrize("part", ["run folder", "store"])
def test_a_read_only_run_is_refused_in_one_line_and_kept(tmp_path, part, capsys):
    _, out = stopped_run(tmp_path)
    before = snapshot(out)
    with read_only(out if part == "run folder" else out / logstore.STORE_NAME):
        assert run_state(out) == ("partial", "resume")  # reading a read-only run works
        assert cli(["train", str(out / "config.toml"), "--out", str(out), "--resume"]) == 2  # in-process: fast
        err = capsys.readouterr().err
        assert one_line(err).startswith(f"phasefit: error: {out}: cannot write to ")
        assert "make the run folder writable" in err
        worker = subprocess.run([sys.executable, "-m", "trainer.run", str(out), "--device", "cpu"], cwd=ROOT,
                                capture_output=True, text=True, check=False)  # as a sweep's worker resumes it
        assert worker.returncode == 2 and one_line(worker.stdout).startswith(f"phasefit: error: {out}: cannot write")
        assert cli(["train", str(out / "config.toml"), "--out", str(out), "--restart"]) == 2
        assert "cannot write to" in one_line(capsys.readouterr().err)
        assert cli(["ls", str(tmp_path)]) == 0 and "failed" in capsys.readouterr().out
    assert snapshot(out) == before  # nothing changed, not even the lock file


def test_a_new_run_into_a_read_only_folder_is_one_line(tmp_path):
    (tmp_path / "runs").mkdir()
    with read_only(tmp_path / "runs"):
        proc = run_cli("train", str(TINY), "--out", str(tmp_path / "runs" / "x"))
    assert proc.returncode == 2 and "cannot write the run's config.toml there" in one_line(proc.stderr)


# ---------------------------------------------------------------- a full disk


def test_a_checkpoint_that_cannot_be_written_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / checkpoints.RESUME
    checkpoints._atomic_save({"w": torch.ones(3)}, path, {"step": "10"})
    kept = path.read_bytes()

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise checkpoints.SafetensorError(NO_SPACE)

    monkeypatch.setattr(checkpoints, "save_file", full)
    with pytest.raises(checkpoints.CheckpointError, match=f"{path}: cannot be written .*No space left on device"):
        checkpoints._atomic_save({"w": torch.zeros(3)}, path, {"step": "20"})
    assert path.read_bytes() == kept and sorted(p.name for p in tmp_path.iterdir()) == [checkpoints.RESUME]


@pytest.mark.parametrize("resume_state,hint", [(True, "--resume"), (False, "--restart")])
def test_a_full_disk_ends_the_run_in_one_line_saying_how_to_go_on(tmp_path, monkeypatch, resume_state, hint):
    config, out = stopped_run(tmp_path, resume_state=resume_state)
    error = checkpoints.CheckpointError(f"{out}/checkpoints/resume.safetensors: cannot be written (No space left)")
    monkeypatch.setattr(loop, "train", lambda *a, **k: (_ for _ in ()).throw(error))
    code, line = train_folder(out, config, torch.device("cpu"), resume=resume_state)
    assert code == 1 and "\n" not in line
    assert line.startswith(f"phasefit: {out}: failed: {error}; ") and line.endswith(f"--out {out} {hint}")


def test_the_store_records_a_full_disk_once(tmp_path, monkeypatch):
    """The trainer's reason quotes the store's own error: the store's reason says it once."""
    writer = logstore.RunWriter.create(tmp_path / "m.zarr", individual=np.arange(4), split=np.full(4, "train"),
                                       rank=np.arange(4), baseline=np.ones(6), n_layers=1, n_heads=1, config={},
                                       package_version="test", fsync=False)
    put = writer._store._put

    def full(key, value):
        if "/c" in key:  # chunks fail; the metadata (the status) can still be written
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        put(key, value)

    monkeypatch.setattr(writer._store, "_put", full)
    writer.append_train(np.arange(1, 5), np.ones(4), np.ones(4))
    with pytest.raises(logstore.StoreError) as raised:
        writer.flush()
    with pytest.raises(logstore.StoreError):
        writer.close("failed", reason=f"StoreError at step 4: {raised.value}")
    reason = logstore.check_store(tmp_path / "m.zarr")[1]["reason"]
    assert reason.count("No space left on device") == 1 and reason.startswith("StoreError at step 4: ")


@pytest.mark.slow  # trains a model twice
def test_a_full_disk_while_saving_a_resume_state_leaves_the_last_one_to_resume(tmp_path, monkeypatch):
    config, out = quick_run(tmp_path, "run", "train.checkpoint_every_s=0.05")
    save, calls = checkpoints.save_file, []

    def fills_up(tensors, filename, metadata=None):
        calls.append(filename)
        if filename.endswith("resume.tmp") and sum(f.endswith("resume.tmp") for f in calls) == 3:
            raise checkpoints.SafetensorError(NO_SPACE)
        save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoints, "save_file", fills_up)
    code, line = train_folder(out, config, torch.device("cpu"), resume=False)
    assert code == 1 and "\n" not in line and "resume.safetensors: cannot be written" in line
    assert "No space left on device" in line and line.endswith("--resume")
    attrs = logstore.check_store(out / logstore.STORE_NAME)[1]
    assert attrs["status"] == "failed" and attrs["reason"].count("No space left on device") == 1
    assert run_state(out, config) == ("partial", "resume")
    monkeypatch.setattr(checkpoints, "save_file", save)  # space freed
    code, line = train_folder(out, config, torch.device("cpu"), resume=True)
    assert code == 0, line
    ds = logstore.open_run(out / logstore.STORE_NAME)
    assert ds.attrs["status"] == "complete" and ds.train_step.values.tolist() == list(range(1, 41))


@pytest.mark.slow  # trains a model
def test_a_really_full_disk_ends_in_one_line(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", disk], capture_output=True, check=False).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root and mount rights)")
    try:
        proc = run_cli("train", str(TINY), "--out", str(disk / "run"), *[f"--set={s}" for s in QUICK],
                       "--set=train.checkpoint_every_s=0.3")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        line = one_line(proc.stderr)
        assert line.startswith(f"phasefit: {disk / 'run'}: failed: ") and line.count("No space left on device") == 1
    finally:
        subprocess.run(["umount", disk], check=True)


# ---------------------------------------------------------------- bad input


def test_init_from_a_run_whose_final_weights_are_truncated_is_one_line(tmp_path, capsys):
    from safetensors.torch import save_file

    from phasefit.cli import main

    _, ref = quick_run(tmp_path, "ref")
    final = ref / "checkpoints" / checkpoints.FINAL
    final.parent.mkdir()
    save_file({"w": torch.zeros(1000)}, str(final))
    final.write_bytes(final.read_bytes()[:1000])  # as a full disk or a killed copy leaves it
    sets = [arg for s in QUICK for arg in ("--set", s)]
    for key in ("train.init_from", "patch.reference"):
        assert main(["train", str(TINY), "--out", str(tmp_path / "new"), *sets, "--set", f"{key}={ref}"]) == 2
        line = one_line(capsys.readouterr().err)
        assert line.startswith(f"phasefit: error: {key}: {final} cannot be read (") and "train that run again" in line
        assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("key", ["train.init_from", "patch.reference", "name"])
def test_a_nul_byte_in_a_path_key_is_one_line(tmp_path, capsys, key):
    from phasefit.cli import main

    assert main(["train", str(TINY), "--out", str(tmp_path / "x"), "--set", f'{key}="runs/a\\u0000b"']) == 2
    assert one_line(capsys.readouterr().err) == f"phasefit: error: {TINY}: {key}: contains a NUL byte ('runs/a\\x00b')"
    assert not (tmp_path / "x").exists()
    sweep = tmp_path / "nul.toml"
    sweep.write_text(f'base = "{TINY}"\n[set]\n"{key}" = "a\\u0000b"\n')
    with pytest.raises(ConfigError, match=f"{key}: contains a NUL byte"):
        load_sweep(sweep, tmp_path / "runs")
    sweep.write_text('base = "../tiny\\u0000.toml"\n')
    with pytest.raises(ConfigError, match="base: expected the path of a config"):
        load_sweep(sweep, tmp_path / "runs")


DEEP = "[" * 5000 + "]" * 5000


def test_deeply_nested_toml_is_one_line(tmp_path, capsys):
    from phasefit.cli import main

    config = tmp_path / "deep.toml"
    config.write_text(f"seed = 0\n[train]\nsteps = {DEEP}\n")
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(f'base = "{TINY}"\n[set]\n"train.steps" = {DEEP}\n')
    tables = tmp_path / "tables.toml"
    tables.write_text(f'base = "{TINY}"\n[set]\ntrain = ' + "{a = " * 2000 + "1" + "}" * 2000 + "\n")
    too_deep = "arrays or tables nested too deeply to read"
    for args, where in [(["train", str(config)], config), (["sweep", str(sweep)], sweep), (["sweep", str(tables)], tables),
                        (["train", str(TINY), "--set", f"train.steps={DEEP}"], "--set train.steps")]:
        assert main([*args, "--out", str(tmp_path / "out")]) == 2
        assert one_line(capsys.readouterr().err).startswith(f"phasefit: error: {where}: {too_deep}")
    assert not (tmp_path / "out").exists()


def test_a_config_with_a_byte_order_mark_is_read(tmp_path):
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + TINY.read_bytes())  # as some Windows editors save it
    assert read_toml(bom) == read_toml(TINY)
    assert load_config(bom, QUICK) == load_config(TINY, QUICK)


# ---------------------------------------------------------------- interruptions


def test_ctrl_c_says_what_continues_the_run_from_what_its_folder_holds(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train", interrupted)
    config, out = quick_run(tmp_path, "early")  # stopped while building the world: no store yet
    code, line = train_folder(out, config, torch.device("cpu"), resume=False)
    assert code == 130 and line == (f"phasefit: {out}: interrupted; it had not started; start it with: "
                                    f"phasefit train {out / 'config.toml'} --out {out}")
    prepare_run(config, out)  # which works
    config, out = stopped_run(tmp_path, "no_state", resume_state=False)
    assert how_to_continue(out).endswith("--restart")
    config, out = stopped_run(tmp_path, "stopped")
    assert how_to_continue(out) == (f"its resume state is saved; continue with: phasefit train {out / 'config.toml'} "
                                    f"--out {out} --resume")


def test_a_sweep_interrupted_counts_only_the_runs_that_are_running(tmp_path, monkeypatch):
    path = tmp_path / "two.toml"
    path.write_text(f'base = "{TINY}"\nseeds = [0, 1]\n')
    started, real_sleep = threading.Event(), time.sleep

    def run(paths, device, env=None, should_stop=None, where=""):
        started.set()
        while not should_stop():
            threading.Event().wait(0.01)
        return [{"status": "interrupted", "message": "its resume state is saved", "wall_s": 0.0, "where": where}]

    def sleep(seconds):  # the sweep's loop: Ctrl-C once the first run trains, the second waiting for a worker
        if started.is_set() and threading.current_thread() is threading.main_thread():
            raise KeyboardInterrupt
        real_sleep(seconds)

    monkeypatch.setattr(pool, "execute_run", run)
    monkeypatch.setattr(pool.time, "sleep", sleep)
    lines = []
    outcomes = pool.run_sweep(load_sweep(path, tmp_path / "runs"), workers=1, device="cpu", progress=False,
                              echo=lines.append)
    assert any("interrupted; waiting for 1 running run to save their state" in line for line in lines), lines
    assert [(o.status, o.message) for o in outcomes] == [("interrupted", "its resume state is saved"),
                                                         ("interrupted", "not started")]


@pytest.mark.slow  # trains a model
def test_sigterm_to_a_sweep_stops_its_runs_with_their_resume_state(tmp_path):
    sweep = tmp_path / "long.toml"
    sets = {**dict(s.split("=") for s in QUICK), "train.steps": 4000, "eval.n_evals": 40, "train.checkpoint_every_s": 3600}
    sweep.write_text(f'base = "{TINY}"\n[set]\n' + "".join(f'"{k}" = {v}\n' for k, v in sets.items()))
    run = tmp_path / "runs" / "long" / "seed0"
    # Started as a non-interactive shell starts a background job (`phasefit sweep ... &` in a
    # script): with SIGINT ignored, which its runs inherit.
    proc = subprocess.Popen([sys.executable, "-m", "phasefit.cli", "sweep", str(sweep), "--out", str(tmp_path / "runs"),
                             "--device", "cpu"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 180
        while logstore.committed_train_steps(run) < 100 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)  # to the sweep alone, as a scheduler's stop or `kill` sends it
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 130, output
        assert "waiting for 1 running run" in output and f"continue with: phasefit sweep {sweep}" in output
        assert not logstore.writer_busy(run / logstore.STORE_NAME)  # no worker left training without its parent
        attrs = logstore.check_store(run / logstore.STORE_NAME)[1]
        assert attrs["status"] == "failed" and "interrupted" in attrs["reason"]
        assert (run / "checkpoints" / checkpoints.RESUME).exists() and run_state(run) == ("partial", "resume")
    finally:
        proc.kill()
        for pid in workers_of(run):  # a worker the sweep left behind (the defect this test is for)
            os.kill(pid, signal.SIGKILL)


def workers_of(run: Path) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if f"trainer.run\0{run}\0" in cmdline.read_text():
                pids.append(int(cmdline.parent.name))
        except OSError:
            pass
    return pids


# ---------------------------------------------------------------- divergence


@pytest.mark.slow  # trains a model
def test_a_model_that_diverges_just_before_an_evaluation_is_not_evaluated(tmp_path, monkeypatch):
    """The loss of step t is that of the weights before update t: an update that makes the weights
    NaN shows in the loss only one step later, after the evaluation of step t."""
    from trainer.plan import build_plan
    from trainer.world import build_world

    config, out = quick_run(tmp_path, "nan")
    steps = build_plan(config.eval, build_world(config.world, config.seed), config.train.steps, config.seed).steps
    t = int(steps[len(steps) // 2])
    make, calls = loop.make_optimizer, []

    def make_poisoned(model, config, fused=False):
        optimizer = make(model, config, fused)
        step = optimizer.step

        def poisoned(*args, **kwargs):
            out = step(*args, **kwargs)
            calls.append(1)
            if len(calls) == t:  # the update of step t breaks the weights
                with torch.no_grad():
                    for p in model.parameters():
                        p.fill_(float("nan"))
            return out

        optimizer.step = poisoned
        return optimizer

    monkeypatch.setattr(loop, "make_optimizer", make_poisoned)
    with pytest.raises(loop.Diverged, match=f"the weights became non-finite in the update of step {t} "):
        loop.train(config, out, torch.device("cpu"), progress=False)
    ds = logstore.open_run(out / logstore.STORE_NAME)
    assert ds.attrs["status"] == "failed" and f"update of step {t}" in ds.attrs["reason"]
    assert ds.step.values.max() < t and np.isfinite(ds.loss.values).all()  # no evaluation of the broken model
