"""Attention patching: a model whose every layer attends with a frozen reference's weights.

``PatchedModel(model, reference)`` runs ``reference`` on the same tokens (without gradient),
takes each layer's softmax attention weights, and runs ``model`` with them in place of its
own. Only ``model``'s parameters are trained, saved and clipped: the reference is held outside
the module tree, so it is neither in ``parameters()`` nor in ``state_dict()``.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.model import Transformer


class PatchedModel(nn.Module):
    def __init__(self, model: Transformer, reference: Transformer):
        super().__init__()
        self.model = model
        reference.requires_grad_(False).eval()
        object.__setattr__(self, "reference", reference)  # not a submodule
        self.n_layers, self.n_heads = model.n_layers, model.n_heads

    def reference_attention(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return self.reference.hidden(tokens, return_attention=True)[1]

    def hidden(self, tokens: torch.Tensor, attention: list[torch.Tensor] | None = None,
               return_attention: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        weights = self.reference_attention(tokens) if attention is None else attention
        return self.model.hidden(tokens, weights, return_attention)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.logits(h)

    def forward(self, tokens: torch.Tensor, attention: list[torch.Tensor] | None = None) -> torch.Tensor:
        return self.logits(self.hidden(tokens, attention)[0])
