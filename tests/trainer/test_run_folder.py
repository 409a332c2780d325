"""A run folder is never silently wrong: a resume trains with the config the store recorded, on
a store that holds what was committed; a stopped run can always be continued or restarted."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import zarr

import logstore
from tests.helpers import QUICK, ROOT, TINY, quick_run, run_cli, stopped_run
from trainer.config import ConfigError, load_config
from trainer.run import prepare_run, run_state


def store_attrs(out):
    return logstore.check_store(out)[1]


def test_resume_refuses_a_config_toml_edited_since_the_run_started(tmp_path):
    config, out = stopped_run(tmp_path)
    saved = out / "config.toml"
    saved.write_text(saved.read_text().replace("lr = ", "lr = 0.047 #").replace("steps = 40", "steps = 300"))
    proc = run_cli("train", str(saved), "--out", str(out), "--resume")
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "differs from the config the store was trained with" in line and "train.lr" in line and "train.steps" in line
    assert store_attrs(out)["status"] == "failed" and store_attrs(out)["committed_steps"] == 1  # untouched


def test_a_second_train_into_a_folder_with_another_config_is_refused(tmp_path):
    config, out = quick_run(tmp_path, "run")  # the first process prepared the folder
    before = (out / "config.toml").read_text()
    other = load_config(TINY, QUICK + ["train.lr=0.047"])
    with pytest.raises(ConfigError, match=r"holds a run with a different config \(train.lr"):
        prepare_run(other, out)
    assert (out / "config.toml").read_text() == before  # the first process's config stays
    prepare_run(config, out)  # the same config again is no conflict (the store decides who trains)
    assert (out / "config.toml").read_text() == before


def test_a_resume_over_a_damaged_store_is_refused_in_one_line(tmp_path):
    config, out = stopped_run(tmp_path)
    (out / logstore.STORE_NAME / "step" / "c.0").unlink()
    assert run_state(out)[0] == "damaged"
    proc = run_cli("train", str(out / "config.toml"), "--out", str(out), "--resume")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "array 'step' is missing its chunk c.0" in line and "Traceback" not in proc.stderr
    assert store_attrs(out)["status"] == "failed" and "interrupted" in store_attrs(out)["reason"]  # unchanged


def test_ls_shows_a_run_whose_writer_is_gone_as_stale(tmp_path):
    config, out = stopped_run(tmp_path, resume_state=False)
    group = zarr.open_group(out / logstore.STORE_NAME, mode="r+", zarr_format=3)
    group.attrs.update({"status": "running"})  # killed by SIGKILL: nobody closed it
    proc = run_cli("ls", str(tmp_path), check=True)
    assert "stale" in proc.stdout and "running" not in proc.stdout
    assert logstore.list_runs(tmp_path)["status"].tolist() == ["stale"]


@pytest.mark.slow
def test_a_run_stopped_before_its_first_resume_state_can_be_restarted(tmp_path):
    config, out = stopped_run(tmp_path, resume_state=False)
    saved = str(out / "config.toml")
    assert "a run already exists there" in run_cli("train", saved, "--out", str(out)).stderr
    assert "nothing to resume" in run_cli("train", saved, "--out", str(out), "--resume").stderr
    proc = run_cli("train", saved, "--out", str(out), "--restart")
    assert proc.returncode == 0, proc.stderr
    attrs = store_attrs(out)
    assert attrs["status"] == "complete" and attrs["committed_train_steps"] == config.train.steps
    proc = run_cli("train", saved, "--out", str(out), "--restart")
    assert proc.returncode == 2 and "the run is complete" in proc.stderr  # a finished run is never deleted


@pytest.mark.slow
def test_sigterm_saves_a_resume_state_and_the_run_continues(tmp_path):
    """Before its first periodic resume state and after one: SIGTERM stops the run between
    steps with a resume state, and --resume finishes it."""
    out = tmp_path / "run"
    sets = QUICK + ["train.steps=1000", "eval.n_evals=20", "train.checkpoint_every_s=3600"]  # later --set wins

    def stop_after(cmd, steps):
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while logstore.committed_train_steps(out) < steps and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
        assert "interrupted; its resume state is saved" in err and (out / "checkpoints" / "resume.safetensors").exists()

    stop_after([sys.executable, "-m", "phasefit.cli", "train", str(TINY), "--out", str(out),
                *[arg for s in sets for arg in ("--set", s)]], 100)  # long before a periodic resume state
    resume = [sys.executable, "-m", "phasefit.cli", "train", str(out / "config.toml"), "--out", str(out), "--resume"]
    stopped_at = logstore.committed_train_steps(out)
    stop_after(resume, stopped_at + 200)  # a resumed run, with a resume state already on disk
    assert logstore.committed_train_steps(out) > stopped_at
    resumed = run_cli(*resume[3:])
    assert resumed.returncode == 0, resumed.stderr
    assert store_attrs(out)["status"] == "complete"
