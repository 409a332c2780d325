"""A decoder-only transformer: pre-norm blocks, causal attention through SDPA, GELU MLP.

Attention can also return its softmax weights (for the attention signatures) and accept
weights supplied from outside (for attention patching): ``forward(tokens, attention=...)``
takes one (B, H, T, T) tensor per layer, used instead of the layer's own softmax.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainer.config import ModelConfig


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None, return_weights: bool = False):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        if weights is None and not return_weights:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            if weights is None:
                scores = (q @ k.transpose(-2, -1)).float() / math.sqrt(q.shape[-1])  # softmax in float32
                causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
                weights = scores.masked_fill(~causal, float("-inf")).softmax(-1)
            y = weights.to(v.dtype) @ v
        y = self.proj(y.transpose(1, 2).reshape(b, t, d))
        return y, (weights if return_weights else None)


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_mlp: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_mlp, bias=False), nn.GELU(), nn.Linear(d_mlp, d_model, bias=False))

    def forward(self, x, weights=None, return_weights=False):
        a, w = self.attn(self.ln1(x), weights, return_weights)
        x = x + a
        return x + self.mlp(self.ln2(x)), w


class Transformer(nn.Module):
    """Token and position embeddings, ``n_layers`` blocks, a final norm, a tied output layer."""

    def __init__(self, m: ModelConfig, vocab_size: int, max_len: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, m.d_model)
        self.pos = nn.Embedding(max_len, m.d_model)
        self.blocks = nn.ModuleList(Block(m.d_model, m.n_heads, m.d_mlp) for _ in range(m.n_layers))
        self.ln_f = nn.LayerNorm(m.d_model)
        self.n_layers, self.n_heads = m.n_layers, m.n_heads
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * m.n_layers))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def hidden(self, tokens: torch.Tensor, attention: list[torch.Tensor] | None = None,
               return_attention: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Final hidden states (B, T, d_model), and each layer's attention weights if asked."""
        x = self.embed(tokens) + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        weights = []
        for i, block in enumerate(self.blocks):
            x, w = block(x, None if attention is None else attention[i], return_attention)
            weights.append(w)
        return self.ln_f(x), weights

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.embed.weight.T

    def forward(self, tokens: torch.Tensor, attention: list[torch.Tensor] | None = None) -> torch.Tensor:
        return self.logits(self.hidden(tokens, attention)[0])

    def n_params(self, embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n if embeddings else n - self.embed.weight.numel() - self.pos.weight.numel()
