"""A pack's probes: the members that evaluate at a step, read in one forward pass per batch.

trainer/probes.py's ``fact_metrics`` and ``attention_signatures`` through the stacked model
(trainer/pack_model.py). Each member keeps its own evaluation: its ``Evaluator`` gives its rows,
batches and attention batch (its plan, population, splits, text), and writes its store's row.
The j-th batches of the members go through the stacked model together, padded to the largest
batch, the longest text and the longest value with padding that no member reads back (a causal
model's outputs at a text's own positions do not see what follows it); each member's metrics
are then taken from its own slice, over its own vocabulary, by the solo code.
"""

from __future__ import annotations

from itertools import zip_longest

import numpy as np
import torch

from trainer.batches import Batch
from trainer.loop import Run
from trainer.pack_model import linear, pack_hidden, stack_padded
from trainer.probes import FactMetrics, fact_metrics_from_logits, signatures


def stacked_fact_metrics(p: dict[str, torch.Tensor], batches: list[Batch], vocab: list[int], n_layers: int,
                         n_heads: int, pad: int) -> list[FactMetrics]:
    """``fact_metrics`` of each member's batch (member i's parameters are ``p``'s slice i, its
    vocabulary the first ``vocab[i]`` tokens), in one forward pass."""
    tokens = stack_padded([b.tokens for b in batches], pad)  # (K, B, T)
    value_pos = stack_padded([b.value_pos for b in batches], -1)  # (K, B, A, V)
    k, b, a, v = value_pos.shape
    pos = value_pos.clamp(min=1)
    h, _ = pack_hidden(p, tokens, n_layers, n_heads)
    h = h.gather(2, (pos - 1).view(k, b, -1, 1).expand(-1, -1, -1, h.shape[-1]))
    logits = linear(h, p["embed.weight"]).view(k, b, a, v, -1)
    targets = tokens.gather(2, pos.view(k, b, -1)).view(k, b, a, v)
    out = []
    for i, batch in enumerate(batches):  # member i's own rows, value tokens and vocabulary
        n, _, m = batch.value_pos.shape
        out.append(fact_metrics_from_logits(logits[i, :n, :, :m, : vocab[i]], targets[i, :n, :, :m],
                                            value_pos[i, :n, :, :m] >= 0))
    return out


def stacked_signatures(p: dict[str, torch.Tensor], batches: list[Batch], n_layers: int, n_heads: int,
                       pad: int) -> list[dict[str, np.ndarray]]:
    """``attention_signatures`` of each member on its batch, in one forward pass."""
    _, weights = pack_hidden(p, stack_padded([b.tokens for b in batches], pad), n_layers, n_heads,
                             return_attention=True)
    out = []
    for i, batch in enumerate(batches):
        n, t = batch.tokens.shape
        out.append(signatures([w[i, :n, :, :t, :t] for w in weights], batch))
    return out


@torch.inference_mode()
def member_rows(params: dict[str, torch.Tensor], runs: list[Run], step: int,
                dtype: torch.dtype) -> list[dict[str, np.ndarray]]:
    """The store rows of ``runs`` at ``step``, each what ``Run.probe`` computes for that run
    alone: ``params`` are their parameters stacked (in ``runs``' order), probed in ``dtype``
    (the ``Evaluator``'s: a copy in bfloat16 on CUDA)."""
    m = runs[0].config.model
    pad = runs[0].bios.pad
    vocab = [len(run.world.vocab) for run in runs]
    p = {name: t.detach().to(dtype) for name, t in params.items()}
    plans = [run.evaluate.batches(run.eval_index[step]) for run in runs]
    parts: list[list[FactMetrics]] = [[] for _ in runs]
    for batches in zip_longest(*(batches for _, batches in plans)):  # members with fewer batches drop out
        here = [i for i, batch in enumerate(batches) if batch is not None]
        sub = p if len(here) == len(runs) else {name: t[here] for name, t in p.items()}
        metrics = stacked_fact_metrics(sub, [batches[i] for i in here], [vocab[i] for i in here], m.n_layers,
                                       m.n_heads, pad)
        for i, found in zip(here, metrics):
            parts[i].append(found)
    attention = stacked_signatures(p, [run.evaluate.attention_batch for run in runs], m.n_layers, m.n_heads, pad)
    return [run.evaluate.row(rows, found, signature, run.sampler.exposures)
            for run, (rows, _), found, signature in zip(runs, plans, parts, attention)]
