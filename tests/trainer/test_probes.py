"""Probes against direct computations: summed value loss, the all-tokens rule, entropy."""

import math

import numpy as np
import pytest
import torch

from tests.helpers import small_world_config
from trainer.batches import Biographies, trim_padding
from trainer.loop import Evaluator
from trainer.model import Transformer
from trainer.patching import PatchedModel
from trainer.plan import build_plan
from trainer.probes import attention_signatures, fact_metrics, fact_metrics_from_logits, signatures
from trainer.world import build_world


def test_metrics_on_hand_built_logits():
    # One individual, two attributes; values of 2 tokens and 1 token (V = 2), vocabulary of 4.
    logits = torch.full((1, 2, 2, 4), -1e9)
    # Attribute 0: target tokens (1, 2). First token: p = (0.1, 0.6, 0.2, 0.1); second: certain of 3.
    logits[0, 0, 0] = torch.tensor([0.1, 0.6, 0.2, 0.1]).log()
    logits[0, 0, 1] = torch.tensor([0.0, 0.0, 0.0, 1.0]).clamp_min(1e-12).log()
    # Attribute 1: one target token (3), the model is uniform; slot 1 is padding.
    logits[0, 1, 0] = 0.0
    targets = torch.tensor([[[1, 2], [3, 0]]])
    valid = torch.tensor([[[True, True], [True, False]]])
    m = fact_metrics_from_logits(logits, targets, valid)
    # Loss sums over the value's tokens: -log 0.6 - log(1e-12) for attribute 0.
    assert m.loss[0, 0].item() == pytest.approx(-math.log(0.6) - math.log(1e-12), rel=1e-5)
    assert m.loss[0, 1].item() == pytest.approx(math.log(4), rel=1e-6)
    # Correct only when every token is the argmax: token 1 is, token 2 is not (3 is).
    assert not m.correct[0, 0]
    # A uniform prediction has an argmax at token 0, not 3.
    assert not m.correct[0, 1]
    assert m.top_prob[0, 0].item() == pytest.approx(0.6, rel=1e-5)
    entropy = -sum(p * math.log(p) for p in (0.1, 0.6, 0.2, 0.1))
    assert m.entropy[0, 0].item() == pytest.approx(entropy, rel=1e-5)
    assert m.entropy[0, 1].item() == pytest.approx(math.log(4), rel=1e-5)
    # Make attribute 0 right at both tokens: now it is correct, and padding is ignored.
    logits[0, 0, 1] = torch.tensor([0.0, 0.0, 1.0, 0.0]).clamp_min(1e-12).log()
    logits[0, 1, 0, 3] = 5.0
    m = fact_metrics_from_logits(logits, targets, valid)
    assert m.correct.all()


@pytest.fixture(scope="module")
def setup():
    config = small_world_config()
    world = build_world(config.world, config.seed)
    torch.manual_seed(0)
    model = Transformer(config.model, len(world.vocab), world.seq_len).eval()
    bios = Biographies(world)
    ids = torch.arange(0, 60, 3)
    return world, model, bios, bios.assemble(ids, *bios.eval_layout(ids))


def test_fact_metrics_equal_a_full_forward_pass(setup):
    world, model, bios, batch = setup
    m = fact_metrics(model, batch)
    with torch.no_grad():
        logp = model(batch.tokens).log_softmax(-1)  # every position, the slow way
    for b in range(len(batch.tokens)):
        for a in range(batch.value_pos.shape[1]):
            span = [p for p in batch.value_pos[b, a].tolist() if p >= 0]
            targets = batch.tokens[b, span]
            rows = logp[b, [p - 1 for p in span]]
            expected_loss = -rows.gather(1, targets[:, None]).sum().item()
            assert m.loss[b, a].item() == pytest.approx(expected_loss, rel=1e-4)
            assert bool(m.correct[b, a]) == bool((rows.argmax(1) == targets).all())
            p = rows[0].exp()
            assert m.top_prob[b, a].item() == pytest.approx(p.max().item(), rel=1e-4)
            assert m.entropy[b, a].item() == pytest.approx(-(p * rows[0]).sum().item(), rel=1e-4)


def test_attention_signatures_are_attention_masses(setup):
    world, model, bios, batch = setup
    sig = attention_signatures(model, batch)
    n_layers, n_heads = model.n_layers, model.n_heads
    for key in ("attn_name_to_name", "attn_value_to_name", "attn_sharpness"):
        assert sig[key].shape == (n_layers, n_heads)
        assert np.isfinite(sig[key]).all() and (sig[key] >= 0).all() and (sig[key] <= 1 + 1e-5).all()
    # Supplying uniform causal attention from outside gives the known values.
    t = batch.tokens.shape[1]
    uniform = torch.ones(t, t).tril()
    uniform = (uniform / uniform.sum(-1, keepdim=True)).expand(len(batch.tokens), n_heads, t, t)
    _, weights = model.hidden(batch.tokens, attention=[uniform] * n_layers, return_attention=True)
    assert torch.equal(weights[0], uniform)
    last_name = batch.name_pos[..., 2].float()
    expected = (2 / (last_name + 1)).mean().item()  # two of the last name's attendable tokens
    sig = signatures(weights, batch)
    assert sig["attn_name_to_name"] == pytest.approx(np.full((n_layers, n_heads), expected), rel=1e-5)
    assert sig["attn_sharpness"] == pytest.approx(np.ones((n_layers, n_heads)), rel=1e-5)


def test_supplied_attention_changes_the_output_and_gets_no_gradient(setup):
    world, model, bios, batch = setup
    tokens = batch.tokens[:4]
    t = tokens.shape[1]
    reference = torch.rand(4, model.n_heads, t, t, requires_grad=True)
    weights = (reference.tril() / reference.tril().sum(-1, keepdim=True)).detach()
    out = model(tokens, attention=[weights] * model.n_layers)
    assert not torch.allclose(out, model(tokens))
    out.sum().backward()
    assert reference.grad is None


def small_plan(world):
    config = small_world_config()
    config.eval.subset, config.eval.heldout_subset, config.eval.n_full = 40, 10, 2
    return build_plan(config.eval, world, 100, seed=0)


def test_the_evaluator_reads_the_plan_in_batches(setup):
    """An evaluation row holds fact_metrics of the step's individuals, whatever the batch size,
    and missing values (NaN, False) for those the plan skips at that step."""
    world, model, bios, _ = setup
    plan = small_plan(world)
    partial = int(np.flatnonzero(~plan.full)[0])
    exposures = torch.arange(world.n)
    rows = {size: Evaluator(world, bios, plan, size, n_attention=8, seed=0)(model, partial, exposures)
            for size in (7, 1024)}
    order = torch.as_tensor(plan.order)
    dense = order[: plan.n_dense]
    expected = fact_metrics(model, bios.assemble(dense, *bios.eval_layout(dense)))
    for row in rows.values():
        for key in ("loss", "top_prob", "entropy"):
            np.testing.assert_allclose(row[key][: plan.n_dense], getattr(expected, key).numpy(), rtol=1e-4, err_msg=key)
            assert np.isnan(row[key][plan.n_dense:]).all()
        np.testing.assert_array_equal(row["correct"][: plan.n_dense], expected.correct.numpy())
        assert not row["correct"][plan.n_dense:].any()
        np.testing.assert_array_equal(row["exposures"], exposures[order].numpy())
        assert row["attn_sharpness"].shape == (model.n_layers, model.n_heads)


def test_the_evaluator_computes_little_padding(setup, monkeypatch):
    """Each evaluation reads its texts shortest first, each batch cut at its longest text: the
    positions computed are within a few percent of the texts' tokens (not n x seq_len)."""
    import trainer.loop

    world, model, bios, _ = setup
    plan = small_plan(world)
    full = int(np.flatnonzero(plan.full)[0])
    widths = []
    monkeypatch.setattr(trainer.loop, "fact_metrics", lambda net, batch: (
        widths.append(batch.tokens.shape), fact_metrics(net, batch))[1])
    evaluate = Evaluator(world, bios, plan, 16, n_attention=8, seed=0)
    evaluate(model, full, torch.zeros(world.n, dtype=torch.long))
    order = torch.as_tensor(plan.order)
    tokens = (bios.assemble(order, *bios.eval_layout(order)).tokens != bios.pad).sum().item()
    computed = sum(b * t for b, t in widths)
    assert sum(b for b, _ in widths) == len(plan.order)
    assert tokens <= computed < 1.05 * tokens
    assert computed < 0.9 * len(plan.order) * world.seq_len


def test_trimming_the_padding_columns_keeps_every_output(setup):
    world, model, bios, batch = setup
    trimmed = trim_padding(batch.tokens, bios.pad)
    assert trimmed.shape[1] < batch.tokens.shape[1]  # biographies are shorter than seq_len
    assert (batch.tokens[:, trimmed.shape[1]:] == bios.pad).all()
    assert (trimmed[:, -1] != bios.pad).any()  # the longest biography is kept whole
    with torch.no_grad():
        torch.testing.assert_close(model(trimmed), model(batch.tokens)[:, : trimmed.shape[1]], rtol=1e-5, atol=1e-5)


def test_bf16_probes_agree_with_float32_ones_and_leave_the_weights_alone(setup):
    """The CUDA probes' precision, on CPU: a bf16 copy of the network (a patched one with its
    reference) gives the float32 values to bf16's precision, follows the weights from one
    evaluation to the next, and leaves the trained weights float32."""
    world, _, bios, _ = setup
    plan = small_plan(world)
    full = int(np.flatnonzero(plan.full)[0])
    exposures = torch.arange(world.n)
    torch.manual_seed(1)
    model = Transformer(small_world_config().model, len(world.vocab), world.seq_len).eval()
    reference = Transformer(small_world_config().model, len(world.vocab), world.seq_len)
    probes = Evaluator(world, bios, plan, 64, n_attention=8, seed=0, dtype=torch.bfloat16)
    for net in (model, model, PatchedModel(model, reference)):
        got = probes(net, full, exposures)
        expected = Evaluator(world, bios, plan, 64, n_attention=8, seed=0)(net, full, exposures)
        np.testing.assert_allclose(got["loss"], expected["loss"], rtol=0.03)
        np.testing.assert_allclose(got["entropy"], expected["entropy"], rtol=0.03, atol=1e-3)
        np.testing.assert_allclose(got["top_prob"], expected["top_prob"], atol=0.01)
        assert (got["correct"] == expected["correct"]).mean() > 0.99
        for key in ("attn_name_to_name", "attn_value_to_name", "attn_sharpness"):
            np.testing.assert_allclose(got[key], expected[key], atol=0.02, err_msg=key)
        with torch.no_grad():  # the next evaluation sees other weights
            model.embed.weight.mul_(3.0)
    assert all(p.dtype == torch.float32 for p in (*model.parameters(), *reference.parameters()))
