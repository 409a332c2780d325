"""The training loop: resume equality, failure paths, and the study's picture in the store."""

import os
import signal

import numpy as np
import pytest
import torch

import logstore
from tests.helpers import QUICK, TINY, quick_run, run_cli
from trainer import loop
from trainer.config import load_config
from trainer.world import build_world

@pytest.mark.slow  # trains a model
def test_a_run_writes_the_schema_and_log_spaced_checkpoints(tmp_path):
    config, out = quick_run(tmp_path, "a")
    summary = loop.train(config, out, torch.device("cpu"), progress=False)
    assert summary.status == "complete" and summary.steps == 40
    ds = logstore.open_run(out / "metrics.zarr")
    assert ds.attrs["status"] == "complete"
    assert ds.step.values[0] == 0 and ds.step.values[-1] == 40 and (np.diff(ds.step.values) > 0).all()
    assert set(np.unique(ds.split.values)) == {"train", "heldout"}
    assert (ds["rank"].values[ds.split.values == "heldout"] == -1).all()
    assert np.isfinite(ds.loss.values).all()  # everyone is evaluated at this size
    assert list(ds.train_step.values) == list(range(1, 41))
    # Exposures count the biographies trained on before each evaluation step.
    assert int(ds.exposures.isel(step=-1).sum()) == 40 * 8
    assert int(ds.exposures.isel(step=0).sum()) == 0
    assert ds.attn_sharpness.shape == (len(ds.step), 2, 2)
    weights = sorted(p.name for p in (out / "checkpoints").glob("step_*.safetensors"))
    assert weights == ["step_00000001.safetensors", "step_00000006.safetensors", "step_00000040.safetensors"]
    assert (out / "checkpoints" / "final.safetensors").exists()
    # The store says what the trainer did: its schedule, conditions and condition in words.
    assert logstore.json_attribute(ds.attrs, "stages") == [{"start": 0, "end": 40, "label": "uniform", "ranks": [0, 39]}]
    assert logstore.json_attribute(ds.attrs, "conditions") == {
        "N": 40, "sampling": "uniform", "lr": config.train.lr, "steps": 40, "batch": 8, "model": "tiny",
        "wd": config.train.weight_decay, "n_finetune": 0, "seed": config.seed}
    assert ds.attrs["condition_label"] == "uniform"
    world = build_world(config.world, config.seed)  # the no-knowledge levels, as the world computes them
    np.testing.assert_array_equal(ds.baseline.values, world.baseline)
    np.testing.assert_array_equal(ds.chance_accuracy.values, world.chance_accuracy)


@pytest.mark.slow  # trains a model
def test_a_warmup_runs_store_holds_its_stages(tmp_path):
    config, out = quick_run(tmp_path, "warm", "sampling.kind=warmup", "sampling.warmup_individuals=16",
                            "sampling.warmup_epochs=2")
    loop.train(config, out, torch.device("cpu"), progress=False)
    attrs = logstore.open_run(out).attrs
    assert logstore.json_attribute(attrs, "stages") == [  # 2 epochs of 16 at 8 per step: 4 steps
        {"start": 0, "end": 4, "label": "warm-up on 16", "ranks": [0, 15]},
        {"start": 4, "end": 40, "label": "uniform", "ranks": [0, 39]}]
    assert logstore.json_attribute(attrs, "conditions")["warmup"] == 16
    assert attrs["condition_label"] == "warm-up 16x2"


def interrupt_at(step: int, monkeypatch):
    """Ctrl-C during training step ``step``; returns a function that undoes it."""
    original = loop.Sampler.sample

    def sample_then_interrupt(self, at, batch_size, generator):
        if at == step:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, at, batch_size, generator)

    monkeypatch.setattr(loop.Sampler, "sample", sample_then_interrupt)
    return lambda: monkeypatch.setattr(loop.Sampler, "sample", original)


@pytest.mark.slow  # trains a model
def test_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    config, straight = quick_run(tmp_path, "straight")
    loop.train(config, straight, torch.device("cpu"), progress=False)

    # The same run, interrupted by Ctrl-C at step 23, then resumed.
    _, broken = quick_run(tmp_path, "broken")
    undo = interrupt_at(23, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        loop.train(config, broken, torch.device("cpu"), progress=False)
    ds = logstore.open_run(broken / "metrics.zarr")
    assert ds.attrs["status"] == "failed" and "interrupted at step 24" in ds.attrs["reason"]
    undo()
    summary = loop.train(config, broken, torch.device("cpu"), resume=True, progress=False)
    assert summary.status == "complete"

    a, b = logstore.open_run(straight / "metrics.zarr"), logstore.open_run(broken / "metrics.zarr")
    np.testing.assert_array_equal(a.step.values, b.step.values)
    np.testing.assert_array_equal(a.train_step.values, b.train_step.values)
    for name in ("loss", "correct", "top_prob", "entropy", "exposures", "train_loss", "lr", "attn_sharpness"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    assert b.attrs["status"] == "complete"


@pytest.mark.slow  # trains a model
def test_a_diverged_run_stops_and_its_store_stays_readable(tmp_path, monkeypatch):
    config, out = quick_run(tmp_path, "nan")
    forward = loop.Transformer.forward
    calls = {"n": 0}

    def poisoned(self, tokens, attention=None):
        calls["n"] += 1
        logits = forward(self, tokens, attention)
        return logits * float("nan") if calls["n"] > 17 else logits

    monkeypatch.setattr(loop.Transformer, "forward", poisoned)
    with pytest.raises(loop.Diverged, match="at step 18"):
        loop.train(config, out, torch.device("cpu"), progress=False)
    ds = logstore.open_run(out / "metrics.zarr")
    assert ds.attrs["status"] == "failed" and "step 18" in ds.attrs["reason"]
    assert len(ds.step) >= 5 and np.isfinite(ds.loss.values).all()


def test_cli_failure_paths(tmp_path):
    proc = run_cli("train", str(TINY), "--device", "cuda", "--out", str(tmp_path / "r"))
    if not torch.cuda.is_available():
        assert proc.returncode == 2 and "CUDA is not available" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("train", str(TINY), "--resume", "--out", str(tmp_path / "none"))
    assert proc.returncode == 2 and "nothing to resume" in proc.stderr


@pytest.mark.parametrize("args,message", [
    (["train", "{tmp}"], "{tmp}: a folder, not a TOML file"),
    (["train", "{tmp}/binary.toml"], "{tmp}/binary.toml: not a text file"),
    (["train", str(TINY), "--out", "{tmp}/a_file"], "--out {tmp}/a_file: exists and is not a folder"),
])
def test_paths_of_the_wrong_kind_give_one_line(tmp_path, capsys, args, message):
    from phasefit.cli import main

    (tmp_path / "a_file").write_text("results\n")
    (tmp_path / "binary.toml").write_bytes(bytes(range(256)))
    assert main([a.format(tmp=tmp_path) for a in args]) == 2
    assert capsys.readouterr().err == f"phasefit: error: {message.format(tmp=tmp_path)}\n"
    assert (tmp_path / "a_file").read_text() == "results\n"  # nothing written over


@pytest.mark.slow  # trains a model
def test_the_command_printed_on_ctrl_c_resumes_the_run(tmp_path, monkeypatch, capsys):
    """The run was started with --set overrides: the printed command (the run's own config.toml)
    continues it, and the first command again names that one."""
    from phasefit.cli import main

    out = tmp_path / "run"
    undo = interrupt_at(23, monkeypatch)
    assert main(["train", str(TINY), "--out", str(out), *[f"--set={s}" for s in QUICK]]) == 130
    command = capsys.readouterr().err.split("continue with: phasefit ")[1].split()
    undo()
    assert main(["train", str(TINY), "--out", str(out), "--resume"]) == 2  # without the overrides
    assert f"phasefit train {out / 'config.toml'} --out {out} --resume" in capsys.readouterr().err
    assert main(command) == 0
    assert logstore.open_run(out / "metrics.zarr").attrs["status"] == "complete"


@pytest.mark.slow  # trains a model
def test_a_damaged_resume_state_is_one_line_and_leaves_the_store(tmp_path, monkeypatch, capsys):
    from phasefit.cli import main

    out = tmp_path / "run"
    undo = interrupt_at(23, monkeypatch)
    assert main(["train", str(TINY), "--out", str(out), *[f"--set={s}" for s in QUICK]]) == 130
    undo()
    resume = out / "checkpoints" / "resume.safetensors"
    resume.write_bytes(resume.read_bytes()[:40])  # truncated, as by a full disk
    steps = logstore.open_run(out).step.values.tolist()
    capsys.readouterr()
    assert main(["train", str(out / "config.toml"), "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"phasefit: error: {resume}: cannot read the resume state (") and err.count("\n") == 1
    assert logstore.open_run(out).step.values.tolist() == steps


@pytest.mark.slow  # trains a model
def test_cli_trains_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    proc = run_cli("train", str(TINY), "--out", str(out), *[f"--set={s}" for s in QUICK], check=True)
    assert "complete" in proc.stdout and "40 steps" in proc.stdout
    assert (out / "config.toml").exists()
    assert load_config(out / "config.toml") == load_config(TINY, QUICK)
    proc = run_cli("train", str(TINY), "--out", str(out), *[f"--set={s}" for s in QUICK])
    assert proc.returncode == 2 and "already exists" in proc.stderr

    # Nor does it write into a folder of runs, into a store, or over a complete run's rows.
    from phasefit.cli import main

    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    (out / "checkpoints" / "resume.safetensors").write_bytes(b"")  # as a run saving often leaves it
    for args, message in [
        (["--out", str(tmp_path)], f"--out {tmp_path}: a folder of 1 runs (run, ...); give the new run a folder"),
        (["--out", str(out / "metrics.zarr" / "x")], f"--out {out / 'metrics.zarr' / 'x'}: inside the metrics store"),
        (["--out", str(out), "--resume"], f"{out}: the run is already complete; nothing to resume"),
    ]:
        assert main(["train", str(out / "config.toml"), *args]) == 2
        assert capsys.readouterr().err.startswith(f"phasefit: error: {message}")
    (out / "checkpoints" / "resume.safetensors").unlink()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert logstore.open_run(out).attrs["status"] == "complete"


def test_a_compiler_failure_falls_back_to_eager_steps(tmp_path, monkeypatch, capsys):
    """An inductor bug (seen with torch 2.11 on the tiny preset's CUDA step) must not cost the run:
    the step warns once and trains eagerly, with the same losses as an eager step."""
    config = load_config(TINY, QUICK + ["train.compile=on"])
    calls = []

    def broken_compile(fn, **kwargs):
        def compiled(*args):
            calls.append(1)
            raise torch._inductor.exc.InductorError(AssertionError("tiling"), None)
        return compiled

    monkeypatch.setattr(loop.torch, "compile", broken_compile)
    losses = {}
    for mode in ("on", "off"):
        torch.manual_seed(0)
        model = loop.Transformer(config.model, 50, 12)
        step = loop.make_train_step(model, loop.make_optimizer(model, config), load_config(
            TINY, QUICK + [f"train.compile={mode}"]), torch.device("cpu"), pad=0)
        tokens = torch.randint(1, 50, (4, 12), generator=torch.Generator().manual_seed(1))
        losses[mode] = [float(step(tokens)) for _ in range(3)]
    assert calls == [1]  # tried once, then eager for good
    assert losses["on"] == losses["off"]
    assert capsys.readouterr().err.count("torch.compile failed") == 1
