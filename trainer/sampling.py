"""Sampling schedules: which individuals each training step's biographies describe.

A schedule is a list of stages over training steps; each stage is a distribution over
individuals, held on the device as a cumulative distribution so that sampling a batch is
one ``searchsorted`` (no host synchronisation, graph-friendly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from trainer.config import SamplingConfig
from trainer.world import World


@dataclass
class Stage:
    start: int  # first training step of the stage
    stop: int  # one past its last step
    ids: np.ndarray  # individuals that can be sampled
    weights: np.ndarray  # their unnormalised probabilities
    label: str
    # (lowest, highest) train-split rank: the stage samples every trained individual in that
    # range and no one else; None when it samples others too (fine-tuning's new individuals)
    ranks: tuple[int, int] | None = None

    def describe(self) -> dict:
        """The stage as the store's ``stages`` attribute holds it (so analyses need not rebuild it)."""
        return {"start": int(self.start), "end": int(self.stop), "label": self.label,
                "ranks": None if self.ranks is None else list(self.ranks)}


def build_stages(s: SamplingConfig, world: World, steps: int, batch_size: int) -> list[Stage]:
    """The stages of a schedule over ``steps`` training steps (the kinds: SamplingConfig; docs/trainer.md)."""
    stages = _stages(s, world, steps, batch_size)
    for st in stages:
        st.ranks = _rank_range(world, st.ids)
    return stages


def _rank_range(world: World, ids: np.ndarray) -> tuple[int, int] | None:
    if not (world.split[ids] == "train").all():
        return None
    rank = world.rank[ids]
    low, high = int(rank.min()), int(rank.max())
    assert high - low + 1 == len(np.unique(rank)), "a stage samples a range of ranks"
    return low, high


def _stages(s: SamplingConfig, world: World, steps: int, batch_size: int) -> list[Stage]:
    train = world.ids("train")
    rank = world.rank[train]
    by_rank = train[np.argsort(rank)]
    ones = np.ones(len(train))
    if s.kind == "uniform":
        return [Stage(0, steps, train, ones, "uniform")]
    if s.kind == "power_law":
        return [Stage(0, steps, train, (rank + 1.0) ** -s.alpha, f"power law alpha={s.alpha:g}")]
    if s.kind == "celebrities":
        weights = np.where(rank < s.celebrities, s.celebrity_weight, 1.0)
        return [Stage(0, steps, train, weights, f"{s.celebrities} celebrities x{s.celebrity_weight:g}")]
    if s.kind == "warmup":
        k = s.warmup_individuals
        warm = min(steps, math.ceil(s.warmup_epochs * k / batch_size))
        stages = [Stage(0, warm, by_rank[:k], np.ones(k), f"warm-up on {k}")]
        return stages + ([Stage(warm, steps, train, ones, "uniform")] if warm < steps else [])
    if s.kind == "sequential":
        groups = np.array_split(by_rank, s.n_groups)
        visits = s.n_groups * s.n_repeats
        bounds = np.linspace(0, steps, visits + 1).round().astype(int)
        return [Stage(int(bounds[v]), int(bounds[v + 1]), groups[v % s.n_groups], np.ones(len(groups[v % s.n_groups])),
                      f"group {v % s.n_groups}") for v in range(visits) if bounds[v + 1] > bounds[v]]
    if s.kind == "finetune":
        new = world.ids("finetune")
        ids = np.concatenate([new, train])
        weights = np.concatenate([np.full(len(new), 1 / len(new)), np.full(len(train), s.replay_weight / len(train))])
        return [Stage(0, steps, ids, weights, f"fine-tune, replay {s.replay_weight:g}")]
    raise ValueError(f"unknown sampling kind {s.kind!r}")


class Sampler:
    """Draws the individuals of each batch and counts exposures, on the device."""

    def __init__(self, stages: list[Stage], n_individuals: int, device: torch.device | str = "cpu"):
        self.stages = stages
        self.device = torch.device(device)
        self._ids = [torch.as_tensor(st.ids, device=device) for st in stages]
        self._cdf = []
        for st in stages:
            cdf = np.cumsum(st.weights / st.weights.sum())
            cdf[-1] = 1.0
            self._cdf.append(torch.as_tensor(cdf, dtype=torch.float64, device=device))
        self.exposures = torch.zeros(n_individuals, dtype=torch.int32, device=device)

    def stage_at(self, step: int) -> int:
        for i, st in enumerate(self.stages):
            if st.start <= step < st.stop:
                return i
        return len(self.stages) - 1

    def probabilities(self, step: int) -> np.ndarray:
        """Each individual's probability of being sampled at ``step`` (dense over the world)."""
        st = self.stages[self.stage_at(step)]
        p = np.zeros(len(self.exposures))
        np.add.at(p, st.ids, st.weights / st.weights.sum())
        return p

    def sample(self, step: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Individuals of one batch (with replacement); their exposures go up by one each."""
        i = self.stage_at(step)
        u = torch.rand(batch_size, dtype=torch.float64, device=self.device, generator=generator)
        individuals = self._ids[i][torch.searchsorted(self._cdf[i], u, right=True).clamp_max(len(self._ids[i]) - 1)]
        self.exposures.index_add_(0, individuals, torch.ones_like(individuals, dtype=torch.int32))
        return individuals
