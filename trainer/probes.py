"""Probes: what the model knows about each fact, and how it attends, on fixed evaluation text.

``fact_metrics`` reads every fact of a batch of evaluation biographies in one forward pass,
looking only at the positions that predict value tokens. ``attention_signatures`` measures
the study's three attention signatures per layer and head on a fixed probe batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainer.batches import Batch
from trainer.model import Transformer


@dataclass
class FactMetrics:
    loss: torch.Tensor  # (B, A) nats, cross-entropy summed over the value's tokens
    correct: torch.Tensor  # (B, A) bool, every value token is the argmax
    top_prob: torch.Tensor  # (B, A) top probability at the value's first token
    entropy: torch.Tensor  # (B, A) nats, predictive entropy there


def fact_metrics_from_logits(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> FactMetrics:
    """Metrics of facts from the logits that predict their value tokens.

    logits (B, A, V, vocab) at the positions before each value token; targets (B, A, V) the
    value tokens; valid (B, A, V) marks the tokens that belong to the value (V is the longest).
    """
    logp = logits.float().log_softmax(-1)
    token_loss = -logp.gather(-1, targets[..., None])[..., 0]
    loss = (token_loss * valid).sum(-1)
    correct = ((logp.argmax(-1) == targets) | ~valid).all(-1)
    first = logp[:, :, 0]
    p = first.exp()
    return FactMetrics(loss, correct, p.max(-1).values, -(p * first).sum(-1))


@torch.inference_mode()
def fact_metrics(model: Transformer, batch: Batch) -> FactMetrics:
    """Per-fact metrics of a batch of biographies (only value-predicting positions are decoded)."""
    b, a, v = batch.value_pos.shape
    valid = batch.value_pos >= 0
    pos = batch.value_pos.clamp(min=1)
    h, _ = model.hidden(batch.tokens)
    h = h.gather(1, (pos - 1).view(b, -1, 1).expand(-1, -1, h.shape[-1]))
    logits = model.logits(h).view(b, a, v, -1)
    targets = batch.tokens.gather(1, pos.view(b, -1)).view(b, a, v)
    return fact_metrics_from_logits(logits, targets, valid)


@torch.inference_mode()
def attention_signatures(model: Transformer, batch: Batch) -> dict[str, np.ndarray]:
    """The study's attention signatures of ``model`` on ``batch`` (see ``signatures``)."""
    _, weights = model.hidden(batch.tokens, return_attention=True)
    return signatures(weights, batch)


def signatures(weights: list[torch.Tensor], batch: Batch) -> dict[str, np.ndarray]:
    """Attention signatures from each layer's weights (B, H, T, T), each of shape (layer, head),
    averaged over the batch and the six sentences of every biography:

    - attn_name_to_name: attention mass from the last name token to the first and middle names;
    - attn_value_to_name: attention mass from the position that predicts the value's first
      token to the three name tokens of its sentence;
    - attn_sharpness: entropy of the attention at that position / log(attendable tokens).
    """
    w = torch.stack(weights, 1).float()  # (B, L, H, T, T)
    b, n_layers, n_heads = w.shape[:3]
    rows = torch.arange(b, device=w.device)[:, None]
    last_name = batch.name_pos[..., 2]  # (B, A)
    predicting = batch.value_pos[..., 0] - 1  # (B, A)

    def mass(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Attention from query positions (B, A) to key positions (B, A, K), summed over K."""
        at_query = w.permute(0, 3, 1, 2, 4)[rows, query]  # (B, A, L, H, T)
        index = keys[:, :, None, None, :].expand(-1, -1, n_layers, n_heads, -1)
        return at_query.gather(-1, index).sum(-1)  # (B, A, L, H)

    name_to_name = mass(last_name, batch.name_pos[..., :2])
    value_to_name = mass(predicting, batch.name_pos)
    at_value = w.permute(0, 3, 1, 2, 4)[rows, predicting]  # (B, A, L, H, T)
    entropy = -(at_value * at_value.clamp_min(1e-30).log()).sum(-1)
    sharpness = entropy / torch.log((predicting + 1).float())[..., None, None]
    mean = lambda x: x.mean((0, 1)).cpu().numpy()  # noqa: E731
    return {"attn_name_to_name": mean(name_to_name), "attn_value_to_name": mean(value_to_name),
            "attn_sharpness": mean(sharpness)}
