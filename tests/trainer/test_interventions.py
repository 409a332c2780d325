"""The study's interventions as run types: attention patching, fine-tuning, sequential groups.

Quick runs check the mechanics (twins, gradients, stores, errors); the study's qualitative
outcomes on real tiny-preset runs are in test_tiny_run.py.
"""

import copy
import json

import numpy as np
import pytest
import torch

import logstore
from tests.helpers import QUICK, TINY, quick_run, run_cli
from trainer import loop
from trainer.config import load_config
from trainer.model import Transformer
from trainer.patching import PatchedModel

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def quick_reference(tmp_path_factory):
    """A finished QUICK run (40 steps; weights kept at steps 1, 6 and 40)."""
    config, out = quick_run(tmp_path_factory.mktemp("reference"), "reference")
    loop.train(config, out, CPU, progress=False)
    return out


def test_patched_gradients_never_reach_the_reference():
    config = load_config(TINY, QUICK)
    torch.manual_seed(0)
    model, reference = Transformer(config.model, 50, 12), Transformer(config.model, 50, 12)
    before = copy.deepcopy(reference.state_dict())
    patched = PatchedModel(model, reference)
    assert [n for n, _ in patched.named_parameters()] == [f"model.{n}" for n, _ in model.named_parameters()]

    tokens = torch.randint(1, 50, (4, 12), generator=torch.Generator().manual_seed(1))
    weights = reference.hidden(tokens, return_attention=True)[1]
    torch.testing.assert_close(patched.hidden(tokens)[0], model.hidden(tokens, weights)[0])
    assert not torch.allclose(patched(tokens), model(tokens))  # the model's own attention is not used

    start = copy.deepcopy(model.state_dict())
    step = loop.make_train_step(patched, loop.make_optimizer(model, config), config, CPU, pad=0)
    for _ in range(3):
        step(tokens)
    for name, p in reference.named_parameters():
        assert p.grad is None and not p.requires_grad and torch.equal(p, before[name]), name
    assert all(not w.requires_grad for w in patched.reference_attention(tokens))
    assert not torch.equal(model.state_dict()["blocks.0.attn.proj.weight"], start["blocks.0.attn.proj.weight"])


def train_losses(out):
    return logstore.open_run(out / "metrics.zarr").train_loss.values


@pytest.mark.slow  # trains a model
def test_a_patched_run_is_its_references_twin_until_patching_starts(tmp_path, quick_reference):
    # Patching from step 20 with the reference's final attention: the same batches and the same
    # initial parameters, so the same losses up to step 20, then different ones.
    config, out = quick_run(tmp_path, "patched", f"patch.reference={quick_reference}", "patch.start=20")
    loop.train(config, out, CPU, progress=False)
    mine, theirs = train_losses(out), train_losses(quick_reference)
    np.testing.assert_array_equal(mine[:20], theirs[:20])
    assert not np.allclose(mine[20:], theirs[20:])
    assert json.loads(logstore.open_run(out / "metrics.zarr").attrs["config"])["patch"]["reference"] == str(quick_reference)

    # start == reference_step freezes the run's own attention of that step: the attention
    # signatures stay those of step 6 from then on.
    config, out = quick_run(tmp_path, "frozen", f"patch.reference={quick_reference}", "patch.reference_step=6",
                            "patch.start=6")
    loop.train(config, out, CPU, progress=False)
    frozen, reference = (logstore.open_run(p / "metrics.zarr") for p in (out, quick_reference))
    np.testing.assert_array_equal(train_losses(out)[:6], train_losses(quick_reference)[:6])
    after = frozen.step.values >= 6
    signature = frozen.attn_sharpness.values[after]
    np.testing.assert_allclose(signature, np.broadcast_to(signature[0], signature.shape), rtol=1e-5)
    assert not np.allclose(reference.attn_sharpness.values[after][-1], signature[0])


@pytest.mark.slow  # trains a model
@pytest.mark.parametrize("extra, message", [
    (["patch.reference={tmp}/nowhere"], "patch.reference = {tmp}/nowhere: not a run folder (no config.toml)"),
    (["patch.reference={ref}", "patch.reference_step=7"], "patch.reference_step = 7: {ref} kept no weights of that "
                                                          "step (it kept steps 1, 6, 40"),
    (["patch.reference={ref}", "model.d_mlp=128"], "patch.reference = {ref}: model.d_mlp is 64 there and 128 here"),
    (["train.init_from={ref}", "world.n_cities=21"], "train.init_from = {ref}: world.n_cities is 20 there and 21 here"),
    (["patch.reference={ref}", "patch.start=40"], "patch.start must be at least 0 and below train.steps (40), not 40"),
])
def test_bad_references_give_one_line_and_write_nothing(tmp_path, quick_reference, extra, message):
    extra = [e.format(tmp=tmp_path, ref=quick_reference) for e in extra]
    out = tmp_path / "run"
    proc = run_cli("train", str(TINY), "--out", str(out), *[f"--set={s}" for s in QUICK + extra])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message.format(tmp=tmp_path, ref=quick_reference) in proc.stderr
    assert not (out / "metrics.zarr").exists()


@pytest.mark.slow  # trains a model
def test_a_finetuning_run_starts_from_the_finished_model(tmp_path, quick_reference):
    config, out = quick_run(tmp_path, "finetune", f"train.init_from={quick_reference}", "world.n_finetune=30",
                            "sampling.kind=finetune", "sampling.replay_weight=0.5", "train.lr_schedule=constant")
    loop.train(config, out, CPU, progress=False)
    tuned, pretrained = (logstore.open_run(p / "metrics.zarr") for p in (out, quick_reference))
    assert set(np.unique(tuned.split.values)) == {"train", "heldout", "finetune"}
    # Step 0 is the pretrained model on the same evaluation text: the old facts' metrics equal
    # the pretrained run's last evaluation (to float rounding: the probes' batches differ, as
    # they are formed by text length among more individuals).
    old = tuned.individual.values[tuned.split.values == "train"]
    at_zero = tuned.loss.isel(step=0).to_series().unstack()
    final = pretrained.loss.isel(step=-1).to_series().unstack()
    np.testing.assert_allclose(at_zero.loc[old].values, final.loc[old].values, rtol=1e-5)
    # New individuals are sampled at the replay weight's share: 1 / (1 + 0.5) of the biographies.
    exposures = tuned.exposures.isel(step=-1).values
    new_share = exposures[tuned.split.values == "finetune"].sum() / exposures.sum()
    assert 0.55 < new_share < 0.8


@pytest.mark.slow  # trains a model
def test_a_sequential_run_visits_one_group_at_a_time(tmp_path):
    config, out = quick_run(tmp_path, "sequential", "sampling.kind=sequential", "sampling.n_groups=2")
    loop.train(config, out, CPU, progress=False)
    ds = logstore.open_run(out / "metrics.zarr")
    trained = ds.split.values == "train"
    rank = ds["rank"].values[trained]
    first_group = rank < 20  # the 20 most frequent ranks of 40
    half = int(np.flatnonzero(ds.step.values <= 20)[-1])
    exposures = ds.exposures.isel(step=half).values[trained]
    assert exposures[first_group].sum() == ds.step.values[half] * 8 and exposures[~first_group].sum() == 0
    assert ds.exposures.isel(step=-1).values[trained][~first_group].sum() == 20 * 8
