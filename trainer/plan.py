"""The evaluation plan: when to evaluate, and whom.

Steps are log-spaced early (the marginals are learned in the first few percent of a run) and
linear later (the plateau and knowledge emergence). At large N, everyone is evaluated at
``n_full`` steps and a seeded, rank-stratified subset at every step; the store lists the
densely evaluated individuals first, so chunks of facts that are never evaluated at a step
stay empty on disk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.config import Config, EvalConfig
from trainer.world import World


@dataclass
class EvalPlan:
    steps: np.ndarray  # (n,) int64 evaluation steps (model after that many updates), 0 and the last included
    full: np.ndarray  # (n,) bool: everyone is evaluated at this step, else only the dense subset
    order: np.ndarray  # (n_individuals,) int64 individual ids in store order, dense subset first
    n_dense: int  # the first n_dense of ``order`` are evaluated at every step

    def individuals_at(self, i: int) -> np.ndarray:
        return self.order if self.full[i] else self.order[: self.n_dense]


def spaced_steps(total: int, n: int, log_fraction: float) -> np.ndarray:
    """About ``n`` distinct steps in [0, total]: a share log-spaced from step 1, the rest linear."""
    n_log = int(round(n * log_fraction))
    log = np.geomspace(1, total, n_log) if n_log else np.zeros(0)
    linear = np.linspace(0, total, max(2, n - n_log))
    return np.unique(np.concatenate([[0, total], log, linear]).round().astype(np.int64))


def dense_size(e: EvalConfig, split: str) -> int:
    """Individuals of ``split`` evaluated at every step (0: everyone)."""
    return e.heldout_subset if split == "heldout" else e.subset


def build_plan(e: EvalConfig, world: World, steps: int, seed: int) -> EvalPlan:
    """Evaluate every split's individuals; a rank-stratified subset of trained ones (evenly
    spaced ranks, so every frequency decile is covered) and seeded random subsets of the other
    splits (``heldout_subset`` held-out individuals: their population curves need fewer) at
    every step; everyone at ``n_full`` evenly spaced steps (the first and the last included:
    the knowledge phase fills most of a run, where per-fact acquisition times need them)."""
    eval_steps = spaced_steps(steps, e.n_evals, e.log_fraction)
    rng = np.random.default_rng([seed, 30])
    dense, rest = [], []
    for split in ("train", "heldout", "finetune"):
        ids = world.ids(split)
        size = dense_size(e, split)
        if size == 0 or len(ids) <= size:
            dense.append(ids)
            continue
        if split == "train":
            by_rank = ids[np.argsort(world.rank[ids])]
            chosen = np.zeros(len(ids), bool)
            chosen[np.linspace(0, len(ids) - 1, size).round().astype(int)] = True
            dense.append(by_rank[chosen])
            rest.append(by_rank[~chosen])
        else:
            perm = rng.permutation(ids)
            dense.append(np.sort(perm[:size]))
            rest.append(np.sort(perm[size:]))
    dense_ids = np.concatenate(dense)
    order = np.concatenate([dense_ids, *rest])
    if len(order) == len(dense_ids):
        full = np.ones(len(eval_steps), bool)
    else:
        full_steps = np.linspace(0, steps, e.n_full)
        # Snap each full evaluation to the nearest planned step.
        nearest = np.abs(eval_steps[:, None] - full_steps[None, :]).argmin(0)
        full = np.zeros(len(eval_steps), bool)
        full[nearest] = True
    return EvalPlan(eval_steps, full, order, len(dense_ids))


def n_probes(c: Config) -> int:
    """Evaluation biographies of a run's plan (as ``build_plan`` makes it, from the config alone)."""
    e, w = c.eval, c.world
    splits = {"train": w.n_individuals, "heldout": w.n_heldout, "finetune": w.n_finetune}
    dense = sum(n if dense_size(e, split) == 0 else min(n, dense_size(e, split)) for split, n in splits.items())
    everyone = sum(splits.values())
    n_evals = len(spaced_steps(c.train.steps, e.n_evals, e.log_fraction))
    n_full = n_evals if dense == everyone else min(n_evals, e.n_full)
    return n_evals * dense + n_full * (everyone - dense)
