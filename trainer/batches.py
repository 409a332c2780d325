"""Biographies assembled as tensors on the training device, with no Python loop over samples.

A biography is BOS followed by the six attribute sentences in a given order, each written
with a given template. ``Biographies.assemble`` builds a whole batch from three small
integer tensors (individuals, template per attribute, sentence order) by gathering template
codes, filling name and value slots, and compacting the result with a cumulative sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.world import BOS, DROP, NAME_SLOT, PAD, VALUE_SLOT, World


@dataclass
class Batch:
    tokens: torch.Tensor  # (B, T) int64, PAD after the biography
    value_pos: torch.Tensor  # (B, A, V) int64 position of each value token in ``tokens``, -1 beyond the value
    name_pos: torch.Tensor  # (B, A, 3) int64 positions of the name tokens in the sentence of each attribute


def trim_padding(tokens: torch.Tensor, pad: int) -> torch.Tensor:
    """The batch (or a pack's batches) without its last columns where every row is padding
    (biographies are shorter than ``seq_len``, about 15% on the tiny world). A causal model's
    outputs at the kept positions are unchanged. Reads the length on the host: for eager CPU work, not for
    compiled or CUDA steps that need fixed shapes and no waits."""
    return tokens[..., : int((tokens != pad).sum(-1).max())]


class Biographies:
    """The world's integer tables on one device, and the batch assembly that reads them."""

    def __init__(self, world: World, device: torch.device | str = "cpu"):
        def put(x):
            return torch.as_tensor(x, device=device)

        self.device = torch.device(device)
        self.names = put(world.names)
        self.value_tokens = put(world.value_tokens)
        self.value_len = put(world.value_len)
        self.codes = put(world.codes)
        self.train_templates = put(world.train_templates)
        self.eval_templates = put(world.eval_templates)
        self.pad, self.bos = world.vocab.index(PAD), world.vocab.index(BOS)
        self.seq_len = world.seq_len
        self.n_attributes, self.n_templates, self.width = world.codes.shape
        self.max_value = world.value_tokens.shape[-1]
        # Where each template's first value slot and first name slot sit among its codes.
        self.value_start = put((world.codes == VALUE_SLOT).argmax(-1))  # (A, K)
        self.name_start = put((world.codes == NAME_SLOT).argmax(-1))  # (A, K)

    def random_layout(self, individuals: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A fresh training template per sentence and a freshly shuffled sentence order."""
        b, a = len(individuals), self.n_attributes
        choice = torch.randint(self.train_templates.shape[-1], (b, a, 1), device=self.device, generator=generator)
        templates = self.train_templates[individuals].gather(2, choice).squeeze(2)
        order = torch.rand((b, a), device=self.device, generator=generator).argsort(1)
        return templates, order

    def eval_layout(self, individuals: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed evaluation text: one evaluation template per fact, a seeded order per individual."""
        g = torch.Generator().manual_seed(seed)
        order = torch.rand((int(individuals.max()) + 1, self.n_attributes), generator=g).argsort(1)
        return self.eval_templates[individuals, :, 0], order.to(self.device)[individuals]

    def assemble(self, individuals: torch.Tensor, templates: torch.Tensor, order: torch.Tensor) -> Batch:
        """Write biographies: ``templates[b, a]`` is the template of attribute a, ``order[b, s]``
        the attribute of sentence s. Returns tokens of shape (B, seq_len) and value positions."""
        b, a, w, v = len(individuals), self.n_attributes, self.width, self.max_value
        sentence_templates = templates.gather(1, order)  # (B, S)
        codes = self.codes[order, sentence_templates]  # (B, S, W)

        is_name = (codes <= NAME_SLOT) & (codes > NAME_SLOT - 3)
        is_value = codes <= VALUE_SLOT
        name_k = (NAME_SLOT - codes).clamp(0, 2)
        value_k = (VALUE_SLOT - codes).clamp(0, v - 1)
        names = self.names[individuals].gather(1, name_k.view(b, -1)).view(b, a, w)
        sentence_values = self.value_tokens[individuals].gather(1, order[..., None].expand(b, a, v))
        values = sentence_values.gather(2, value_k)
        value_len = self.value_len[individuals].gather(1, order)[..., None]
        keep = (codes >= 0) | is_name | (is_value & (value_k < value_len))
        tokens = torch.where(is_name, names, torch.where(is_value, values, codes))

        # Compact: the kept codes of each row, in order, after BOS; the rest is padding.
        keep = keep.view(b, -1)
        position = keep.cumsum(1)  # BOS sits at 0, so the first kept code lands at 1
        out = torch.full((b, self.seq_len + 1), self.pad, dtype=torch.long, device=self.device)
        out[:, 0] = self.bos
        out.scatter_(1, torch.where(keep, position, self.seq_len), tokens.view(b, -1))

        # Positions by attribute: the attribute's sentence, then the slots within its template.
        sentence_start = order.argsort(1) * w  # (B, A)
        attributes = torch.arange(a, device=self.device)

        def positions(start: torch.Tensor, n: int) -> torch.Tensor:
            slots = (sentence_start + start[attributes, templates])[..., None] + torch.arange(n, device=self.device)
            return position.gather(1, slots.view(b, -1)).view(b, a, n)

        value_pos = positions(self.value_start, v)
        value_pos = torch.where(torch.arange(v, device=self.device) < self.value_len[individuals][..., None], value_pos, -1)
        return Batch(out[:, : self.seq_len], value_pos, positions(self.name_start, 3))


def decode(world: World, tokens: torch.Tensor, value_pos: torch.Tensor | None = None, mark=("[", "]")) -> str:
    """One biography as text, tokens separated by spaces, values wrapped in ``mark``."""
    words = [world.vocab[t] for t in tokens.tolist()]
    if value_pos is not None:
        for span in value_pos.tolist():
            span = [p for p in span if p >= 0]
            words[span[0]] = mark[0] + words[span[0]]
            words[span[-1]] = words[span[-1]] + mark[1]
    return " ".join(w for w in words if w != PAD)
