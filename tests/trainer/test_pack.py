"""Packs: K runs trained as one stacked model, each member an ordinary run equal to the same
run trained alone; divergence of one member, a killed pack resumed, sweeps that pack, memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import logstore
from tests.helpers import QUICK, ROOT, TINY
from trainer import loop, pack, pack_model, pool
from trainer.checkpoints import saved_step
from trainer.config import ConfigError, load_config
from trainer.model import Transformer
from trainer.run import prepare_run, train_runs
from trainer.sweep import load_sweep

CPU = torch.device("cpu")
METRICS = ("loss", "top_prob", "entropy", "attn_name_to_name", "attn_value_to_name", "attn_sharpness")


def members(tmp_path, prefix: str, *extra: str):
    """Three QUICK runs over 60 steps: seeds 0, 1 and 2, the last with power-law sampling."""
    configs = [load_config(TINY, QUICK + ["train.steps=60", f"seed={s}", *extra]
                           + (["sampling.kind=power_law", "sampling.alpha=0.7"] if s == 2 else [])) for s in range(3)]
    outs = [tmp_path / f"{prefix}{s}" for s in range(3)]
    for c, o in zip(configs, outs):
        prepare_run(c, o)
    return configs, outs


# ---------------------------------------------------------------- what may pack, and the step's parts


def test_compatible_says_in_one_line_why_runs_cannot_share_a_step():
    base = load_config(TINY, QUICK)
    assert pack.compatible([base, load_config(TINY, QUICK + ["seed=3", "sampling.kind=power_law",
                                                             "world.n_individuals=60", "eval.n_evals=20"])]) == ""
    reason = pack.compatible([base, load_config(TINY, QUICK + ["train.lr=0.001"])], ["a", "b"])
    assert reason == "train.lr differs (0.005 in a, 0.001 in b); a pack shares it"
    assert "model.d_model differs" in pack.compatible([base, load_config(TINY, QUICK + ["model.d_model=64"])])
    patched = load_config(TINY, QUICK + ["patch.reference=/nowhere"])
    assert pack.compatible([base, patched], ["a", "b"]) == "b: a patched run (patch.reference) trains alone"
    assert pack.pack_key(patched) == () and pack.pack_key(base) != ()


def test_the_packed_forward_is_each_members_own():
    """Members of different vocabularies and lengths, stacked with zero padding: each member's
    logits are its solo Transformer's (the padded columns are masked by the step)."""
    config = load_config(TINY, QUICK)
    torch.manual_seed(0)
    models = [Transformer(config.model, v, t) for v, t in ((50, 12), (47, 11), (50, 12))]
    params = {n: pack_model.stack_padded([m.get_parameter(n) for m in models]) for n, _ in models[0].named_parameters()}
    tokens = torch.randint(1, 47, (3, 4, 11), generator=torch.Generator().manual_seed(1))
    logits = pack_model.pack_logits(params, tokens, config.model.n_layers, config.model.n_heads)
    for i, m in enumerate(models):
        vocab = m.embed.weight.shape[0]
        torch.testing.assert_close(logits[i, ..., :vocab], m(tokens[i]), rtol=1e-5, atol=1e-5)
        assert (logits[i, ..., vocab:] == 0).all()


def test_batched_probes_give_each_member_its_own_evaluation(tmp_path, monkeypatch):
    """Members of other vocabularies, populations, splits, plans and evaluation batch sizes,
    trained apart for 15 steps, then probed together at a step where all evaluate and at one
    where only some do: each member's stored row is the one its own Evaluator gives its solo
    model (a member read with another's parameters, text or rows would differ)."""
    extra = [[], ["seed=1", "world.n_individuals=60", "eval.n_evals=7", "eval.subset=20", "eval.n_full=3",
                  "eval.batch_size=16"], ["seed=2", "world.n_heldout=25", "eval.attention_probe=6", "eval.batch_size=8"]]
    configs = [load_config(TINY, QUICK + e) for e in extra]
    outs = [tmp_path / f"p{i}" for i in range(3)]
    for c, o in zip(configs, outs):
        prepare_run(c, o)
    runs = [loop.Run(c, o, CPU) for c, o in zip(configs, outs)]
    assert len({len(r.world.vocab) for r in runs}) == 3 and len({len(r.plan.order) for r in runs}) == 3
    packed = pack.Pack(runs, CPU)
    for step in range(15):
        packed.step_fn(packed.batches(step))
    stored = {}
    monkeypatch.setattr(pack, "batched_probes", lambda device: True)  # the CUDA path, here on the CPU
    monkeypatch.setattr(loop.Run, "record_eval", lambda self, s, row: stored.__setitem__((s, self.config.seed), row))
    some = next(int(s) for s in runs[0].plan.steps if s not in runs[1].eval_index)
    for step, due in ((runs[1].plan.steps[1], [0, 1, 2]), (some, [0, 2])):
        packed.probe(due, int(step))
        assert sorted(stored) == sorted((int(step), runs[i].config.seed) for i in due)
        for i in due:
            run = runs[i]
            alone = run.evaluate(run.model, run.eval_index[int(step)], run.sampler.exposures)
            row = stored[int(step), run.config.seed]
            assert row.keys() == alone.keys()
            for name in alone:
                if name in ("correct", "exposures"):
                    np.testing.assert_array_equal(row[name], alone[name], err_msg=name)
                else:
                    np.testing.assert_allclose(row[name], alone[name], rtol=1e-5, atol=1e-6, err_msg=name)
        stored.clear()
    for run in runs:
        run.writer.close("failed", reason="test")


def test_gradient_clipping_is_per_member():
    scale = torch.tensor([0.01, 1.0, 100.0])  # member 0's norm is below the limit, the others' above
    grads = [torch.randn(3, 5, 4) * scale[:, None, None], torch.randn(3, 7) * scale[:, None]]
    params = [torch.zeros_like(g, requires_grad=True) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    pack.clip_per_member(params, 1.0)
    for i in range(3):
        alone = [torch.zeros_like(g[i], requires_grad=True) for g in grads]
        for p, g in zip(alone, grads):
            p.grad = g[i].clone()
        torch.nn.utils.clip_grad_norm_(alone, 1.0)
        for p, a in zip(params, alone):
            torch.testing.assert_close(p.grad[i], a.grad)
    assert torch.equal(params[0].grad[0], grads[0][0])  # a small gradient is left alone


def test_the_memory_estimate_counts_what_a_pack_holds(tmp_path):
    """Parameters, gradients and AdamW moments: the estimate against the bytes a pack of 3 holds
    after one step on the CPU (the activations are a GPU figure, checked by gpu_checks.sh)."""
    configs, outs = members(tmp_path, "m")
    runs = [loop.Run(c, o, CPU) for c, o in zip(configs, outs)]
    for run in runs:
        assert pack.param_count(run.config, len(run.world.vocab), run.world.seq_len) == \
            run.model.n_params(embeddings=True)
    packed = pack.Pack(runs, CPU)
    packed.step_fn(packed.batches(0))
    held = {"parameters": sum(p.nbytes for p in packed.params.values()),
            "gradients": sum(p.grad.nbytes for p in packed.params.values()),
            "optimizer": sum(s[k].nbytes for s in packed.optimizer.state.values() for k in ("exp_avg", "exp_avg_sq"))}
    vocab, seq_len = max(len(r.world.vocab) for r in runs), max(r.world.seq_len for r in runs)
    estimate = pack.pack_bytes(configs[0], vocab, seq_len, 3, CPU)
    assert {k: estimate[k] for k in held} == held
    for run in runs:
        run.writer.close("failed", reason="test")


def test_a_pack_that_does_not_fit_is_refused_naming_the_size_that_does():
    config = load_config(TINY)
    world = pack.build_world(config.world, config.seed)
    one = sum(pack.pack_bytes(config, len(world.vocab), world.seq_len, 1, CPU).values())
    free = int(3.5 * one / pack.MEMORY_SHARE)
    pack.check_memory(config, 3, CPU, free=free)
    with pytest.raises(ConfigError, match=r"^a pack of 8 runs needs about .* GiB on cpu, but .* GiB are free; "
                                          r"use a pack of at most 3$"):
        pack.check_memory(config, 8, CPU, free=free)


# ---------------------------------------------------------------- sweeps


def test_a_sweep_sends_compatible_runs_as_packs_of_at_most_k(tmp_path, monkeypatch):
    sweep_file = tmp_path / "study.toml"
    sweep_file.write_text(f'base = "{TINY}"\nseeds = [0, 1, 2]\npack = 2\n[[include]]\nlabel = "a"\n'
                          '[[include]]\nlabel = "slow"\n"train.lr" = 0.001\n')
    sent = []

    def fake(paths, device, env=None, should_stop=None, where=""):
        sent.append([os.path.basename(p) for p in paths])
        return [{"status": "failed", "message": "not trained here", "wall_s": 0.0, "where": where}] * len(paths)

    monkeypatch.setattr(pool, "execute_run", fake)
    sweep = load_sweep(sweep_file, tmp_path / "runs")
    pool.run_sweep(sweep, device="cpu", progress=False, echo=lambda _: None)
    assert sorted(sent) == [["a-seed0", "a-seed1"], ["a-seed2"], ["slow-seed0", "slow-seed1"], ["slow-seed2"]]
    sent.clear()
    pool.run_sweep(sweep, device="cpu", progress=False, echo=lambda _: None, pack=3)  # --pack K wins
    assert sorted(sent) == [["a-seed0", "a-seed1", "a-seed2"], ["slow-seed0", "slow-seed1", "slow-seed2"]]
    sweep_file.write_text(f'base = "{TINY}"\npack = 0\n')
    with pytest.raises(ConfigError, match="pack: expected an integer >= 1, got 0"):
        load_sweep(sweep_file, tmp_path / "runs")
    assert pool.default_pack("cpu") == 1 and pool.default_pack("cuda") > 1


# ---------------------------------------------------------------- training


@pytest.mark.slow  # trains three runs alone and twice as a pack
def test_each_member_of_a_pack_is_the_run_trained_alone(tmp_path, monkeypatch):
    """With the members probed one by one (the CPU's way) and together (CUDA's, here on the CPU)."""
    configs, solo = members(tmp_path, "solo")
    for c, o in zip(configs, solo):
        loop.train(c, o, CPU, progress=False)
    for probes in ("one_by_one", "batched"):
        monkeypatch.setattr(pack, "batched_probes", lambda device: probes == "batched")
        _, packed = members(tmp_path, probes)
        results = pack.train_pack(configs, packed, CPU, [False] * 3, progress=False)
        assert [r.status for r in results] == ["complete"] * 3
        for a_path, b_path in zip(solo, packed):
            a, b = logstore.open_run(a_path), logstore.open_run(b_path)
            assert b.attrs["status"] == "complete" and b.attrs["config"] == a.attrs["config"]
            np.testing.assert_array_equal(a.train_step.values, np.arange(1, 61))
            np.testing.assert_array_equal(b.train_step.values, a.train_step.values)
            np.testing.assert_array_equal(b.step.values, a.step.values)
            np.testing.assert_array_equal(b.lr.values, a.lr.values)
            np.testing.assert_allclose(b.train_loss.values, a.train_loss.values, rtol=1e-5)
            for name in METRICS:
                np.testing.assert_allclose(b[name].values, a[name].values, rtol=1e-4, atol=1e-5,
                                           err_msg=f"{probes}: {name}")
            np.testing.assert_array_equal(b.correct.values, a.correct.values)
            np.testing.assert_array_equal(b.exposures.values, a.exposures.values)
            kept = sorted(p.name for p in (a_path / "checkpoints").iterdir())
            assert sorted(p.name for p in (b_path / "checkpoints").iterdir()) == kept
            wa, wb = load_file(str(a_path / "checkpoints" / "final.safetensors")), \
                load_file(str(b_path / "checkpoints" / "final.safetensors"))
            # the member's own vocabulary
            assert {k: v.shape for k, v in wa.items()} == {k: v.shape for k, v in wb.items()}
            for k in wa:
                torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5)
        assert len({load_file(str(p / "checkpoints" / "final.safetensors"))["embed.weight"].shape for p in packed}) > 1


@pytest.mark.slow  # trains a pack
def test_a_member_that_diverges_fails_alone(tmp_path, monkeypatch):
    configs, outs = members(tmp_path, "nan")
    batch = loop.Run.batch

    def poisoned(self, step):
        if self.config.seed == 1 and step == 20:  # member 1's weights break during step 20
            with torch.no_grad():
                for p in self.model.parameters():
                    p.fill_(float("nan"))
        return batch(self, step)

    monkeypatch.setattr(loop.Run, "batch", poisoned)
    results = pack.train_pack(configs, outs, CPU, [False] * 3, progress=False)
    assert isinstance(results[1], loop.Diverged) and [results[i].status for i in (0, 2)] == ["complete"] * 2
    bad = logstore.open_run(outs[1])
    assert bad.attrs["status"] == "failed" and "step 21" in bad.attrs["reason"]
    assert bad.train_step.values.max() < 60 and np.isfinite(bad.loss.values).all()  # never evaluated broken
    assert not (outs[1] / "checkpoints" / "final.safetensors").exists()
    for i in (0, 2):
        good = logstore.open_run(outs[i])
        assert good.attrs["status"] == "complete" and good.train_step.values.tolist() == list(range(1, 61))
        assert np.isfinite(good.train_loss.values).all()


@pytest.mark.slow  # trains a pack in a process, kills it, resumes it
def test_a_killed_pack_resumes_every_member_keeping_its_rows(tmp_path):
    _, outs = members(tmp_path, "k", "train.steps=240", "train.checkpoint_every_s=0.2")
    proc = subprocess.Popen([sys.executable, "-m", "trainer.run", *map(str, outs), "--device", "cpu"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not all(
                (o / "checkpoints" / "resume.safetensors").exists() and logstore.committed_train_steps(o) >= 100
                for o in outs):
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL, output
    before = []
    for o in outs:
        ds = logstore.open_run(o)
        before.append((ds.train_step.values.copy(), ds.train_loss.values.copy(), ds.step.values.copy(),
                       ds.loss.values.copy(), saved_step(o / "checkpoints")))
        assert 0 < len(ds.train_step) < 240
    assert train_runs(outs, "cpu") == 0
    for o, (train_step, train_loss, step, loss, saved) in zip(outs, before):
        ds = logstore.open_run(o)
        assert ds.attrs["status"] == "complete" and ds.train_step.values.tolist() == list(range(1, 241))
        # Rows up to the resume state are kept as they were; rows committed after it are trained
        # again from it (here in another process, whose thread count can move the last bits).
        kept, evals = int(np.sum(train_step <= saved)), int(np.sum(step <= saved))
        assert kept > 0
        np.testing.assert_array_equal(ds.train_loss.values[:kept], train_loss[:kept])
        np.testing.assert_array_equal(ds.loss.values[:evals], loss[:evals])
        np.testing.assert_allclose(ds.train_loss.values[: len(train_step)], train_loss, rtol=1e-5)
        np.testing.assert_allclose(ds.loss.values[: len(step)], loss, rtol=1e-4, equal_nan=True)
        assert (o / "checkpoints" / "final.safetensors").exists()
