"""trainer/model.py's Transformer with a leading run dimension: K members' forward in one pass.

Parameters are the Transformer's, by its names, stacked (K, ...) with ``stack_padded`` (members'
vocabularies and ``seq_len`` may differ: the stacked embeddings are padded with zero rows);
tokens are (K, B, T). The pack's training step (trainer/pack.py) and its probes
(trainer/pack_probes.py) both run through ``pack_hidden``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w.T`` for each member: x (K, ..., in), w (K, out, in)."""
    k = x.shape[0]
    return torch.bmm(x.reshape(k, -1, x.shape[-1]), w.transpose(1, 2)).view(*x.shape[:-1], w.shape[1])


def norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:]) * weight[:, None, None] + bias[:, None, None]


def pack_hidden(p: dict[str, torch.Tensor], tokens: torch.Tensor, n_layers: int, n_heads: int,
                return_attention: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``Transformer.hidden`` for every member at once: final hidden states (K, B, T, d_model),
    and each layer's attention weights (K, B, H, T, T) if asked (computed as the solo model
    computes them: scores and softmax in float32). Attention has no parameters, so the members'
    batches go through it as one batch."""
    k, b, t = tokens.shape
    runs = torch.arange(k, device=tokens.device)[:, None, None]
    x = p["embed.weight"][runs, tokens] + p["pos.weight"][:, None, :t]
    d = x.shape[-1]
    weights = []
    for i in range(n_layers):
        block = lambda name: p[f"blocks.{i}.{name}"]  # noqa: E731
        h = norm(x, block("ln1.weight"), block("ln1.bias"))
        q, k_, v = linear(h, block("attn.qkv.weight")).view(k * b, t, 3, n_heads, d // n_heads).permute(2, 0, 3, 1, 4)
        if return_attention:
            scores = (q @ k_.transpose(-2, -1)).float() / math.sqrt(q.shape[-1])
            causal = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril()
            w = scores.masked_fill(~causal, float("-inf")).softmax(-1)
            y = w.to(v.dtype) @ v
            weights.append(w.view(k, b, n_heads, t, t))
        else:
            y = F.scaled_dot_product_attention(q, k_, v, is_causal=True)
        x = x + linear(y.transpose(1, 2).reshape(k, b, t, d), block("attn.proj.weight"))
        h = norm(x, block("ln2.weight"), block("ln2.bias"))
        x = x + linear(F.gelu(linear(h, block("mlp.0.weight"))), block("mlp.2.weight"))
    return norm(x, p["ln_f.weight"], p["ln_f.bias"]), weights


def pack_logits(p: dict[str, torch.Tensor], tokens: torch.Tensor, n_layers: int, n_heads: int) -> torch.Tensor:
    """``Transformer.forward`` for every member at once: logits (K, B, T, vocab) of tokens (K, B, T)."""
    return linear(pack_hidden(p, tokens, n_layers, n_heads)[0], p["embed.weight"])


def stack_padded(tensors: list[torch.Tensor], fill: float = 0) -> torch.Tensor:
    """Members' tensors stacked on a new first dimension, each padded with ``fill`` to the
    largest size along every dimension."""
    shape = [max(sizes) for sizes in zip(*(t.shape for t in tensors))]
    out = tensors[0].new_full((len(tensors), *shape), fill)
    for i, t in enumerate(tensors):
        out[(i, *(slice(n) for n in t.shape))] = t.detach()
    return out
