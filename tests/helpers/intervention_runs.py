"""Synthetic intervention runs with known answers, in the store schema (no training needed).

Every fact's correctness follows a target accuracy curve exactly: at each step the first
round(A(t) x facts) facts of a set (in a fixed random order) are correct, the others not,
so the measured population curve is A(t) up to 1 / facts, and each measure has a closed form.
A correct fact has loss 0.1 nats, a wrong one its attribute's baseline.
"""

from __future__ import annotations

import json

import numpy as np

from phasefit.simulate import set_config, simulate

# Fine-tuning: 90% of the old facts known at step 0; a third of the old facts (30 points of
# accuracy) forgotten at steps spread evenly over [20, 120], half of those relearned over
# [500, 1500]; 80% of the new facts acquired at steps spread evenly over [200, 1800].
FINETUNE_STEPS = np.unique(np.concatenate([np.arange(0, 200, 5), np.arange(200, 2001, 20)]))
FINETUNE_TRUTH = {"old_accuracy_start": 0.9, "collapse_depth": 0.3, "collapse_step": 70.0, "old_accuracy_min": 0.6,
                  "old_accuracy_final": 0.75, "new_acquisition_step": 1200.0, "new_acquired": 0.8,
                  "new_accuracy_final": 0.8}


def _base(n_train: int, n_other: int, steps: np.ndarray, seed: int):
    """A simulated run as a template: coordinates, attributes and the non-fact variables."""
    ds = simulate(n_individuals=n_train, n_heldout=n_other, n_steps=int(steps[-1]), n_evals=len(steps), seed=seed,
                  n_layers=1, n_heads=2)
    return ds.isel(step=slice(0, len(steps))).assign_coords(step=steps)


def _facts_from(ds, individuals: np.ndarray, correct: np.ndarray) -> None:
    """Write ``correct`` (step, individual, attribute) of ``individuals`` into ds, with its loss."""
    baseline = ds["baseline"].values[None, None, :]
    ds["correct"].values[:, individuals] = correct
    ds["loss"].values[:, individuals] = np.where(correct, 0.1, baseline).astype(np.float32)


def _states(times: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """(step, fact): True from each fact's time on (times: NaN = never)."""
    return steps[:, None] >= np.nan_to_num(times, nan=np.inf)[None, :]


def _spread(n: int, share: float, low: float, high: float, rng) -> np.ndarray:
    """Event times for n facts: a ``share`` of them evenly over [low, high], the rest NaN, in a random order."""
    k = int(round(share * n))
    times = np.full(n, np.nan)
    times[:k] = low + (np.arange(k) + 0.5) / k * (high - low)
    return rng.permutation(times)


def finetune_run(n_old: int = 300, n_new: int = 150, seed: int = 0):
    steps = FINETUNE_STEPS
    ds = _base(n_old, n_new, steps, seed)
    rng = np.random.default_rng(seed)
    old = np.flatnonzero(ds["split"].values == "train")
    new = np.flatnonzero(ds["split"].values != "train")
    n_facts = n_old * 6
    order = rng.permutation(n_facts)
    known = order < round(0.9 * n_facts)  # known at step 0
    forgotten = order < round(0.3 * n_facts)  # among the known
    relearned = order < round(0.15 * n_facts)
    forget_at = np.full(n_facts, np.nan)
    forget_at[forgotten] = 20 + (np.argsort(np.argsort(rng.random(forgotten.sum()))) + 0.5) / forgotten.sum() * 100
    relearn_at = np.full(n_facts, np.nan)
    relearn_at[relearned] = 500 + (np.argsort(np.argsort(rng.random(relearned.sum()))) + 0.5) / relearned.sum() * 1000
    old_correct = known[None] & (~_states(forget_at, steps) | _states(relearn_at, steps))
    _facts_from(ds, old, old_correct.reshape(len(steps), n_old, 6))
    new_correct = _states(_spread(n_new * 6, 0.8, 200, 1800, rng), steps)
    _facts_from(ds, new, new_correct.reshape(len(steps), n_new, 6))
    split = np.where(ds["split"].values == "train", "train", "finetune")
    ds = ds.assign_coords(split=("individual", split))
    config = json.loads(ds.attrs["config"])
    config["world"].update(n_individuals=n_old, n_heldout=0, n_finetune=n_new)
    config["sampling"].update(kind="finetune", replay_weight=0.25)
    config["train"].update(init_from="runs/base", lr=3e-5, lr_schedule="constant")
    set_config(ds, config)
    return ds


def patched_pair(reference_dir, t2_patched: float = 800, t2_reference: float = 2000, n: int = 300, seed: int = 0):
    """(patched run, reference run): simulated runs whose plateaus end at the given steps (t1
    200, t3 5000 of 8000 steps); the patched run's config points at ``reference_dir``."""
    common = dict(n_individuals=n, n_heldout=20, n_steps=8000, n_evals=80, t1=200, t3=5000, n_layers=1, n_heads=2)
    reference = simulate(t2=t2_reference, seed=seed, **common)
    patched = simulate(t2=t2_patched, seed=seed + 1, **common)
    config = json.loads(patched.attrs["config"])
    config["patch"] = {"reference": str(reference_dir), "reference_step": -1, "start": 0}
    set_config(patched, config)
    return patched, reference


# Sequential: 3 groups visited twice (6 visits of 200 steps). In visit v the visited group's
# accuracy rises from its start value a towards 1 as a + (1 - a)(1 - exp(-x / tau_v)), x the
# steps into the visit; after the visit it decays as e exp(-x / phi_v), x the steps since.
SEQUENTIAL = {"n_groups": 3, "n_repeats": 2, "steps": 1200}
TAU = [40.0, 30.0, 24.0, 18.0, 14.0, 10.0]  # learning: faster visit after visit
PHI = [tau / 2 for tau in TAU]  # forgetting: twice as fast as learning


def sequential_truth() -> dict:
    """Exact learn_steps and forget_steps per visit (visit length D = 200 steps)."""
    d, n_groups, visits = 200.0, SEQUENTIAL["n_groups"], len(TAU)
    out = {}
    for v in range(visits):
        learn = -TAU[v] * np.log(1 - (1 - np.exp(-d / TAU[v])) / 2)
        window = d * (n_groups - 1) if v + n_groups < visits else d * (visits - 1 - v)
        forget = -PHI[v] * np.log((1 + np.exp(-window / PHI[v])) / 2) if window > 0 else None
        out[v] = {"learn_steps": learn, "forget_steps": forget}
    return out


def _group_accuracy(steps: np.ndarray) -> np.ndarray:
    """(step, group) target accuracy: 0 before a group's first visit, then rises and decays."""
    n_groups, d = SEQUENTIAL["n_groups"], 200.0
    acc = np.zeros((len(steps), n_groups))
    for g in range(n_groups):
        end_value, end = 0.0, None
        for v in range(g, len(TAU), n_groups):
            start = v * d
            a = 0.0 if end is None else end_value * np.exp(-(start - end) / PHI[v - n_groups])
            rising = (steps >= start) & (steps <= start + d)
            acc[rising, g] = a + (1 - a) * (1 - np.exp(-(steps[rising] - start) / TAU[v]))
            end_value, end = a + (1 - a) * (1 - np.exp(-d / TAU[v])), start + d
            after = steps > end
            acc[after, g] = end_value * np.exp(-(steps[after] - end) / PHI[v])
    return acc


def sequential_run(n: int = 300, seed: int = 0):
    steps = np.arange(0, SEQUENTIAL["steps"] + 1, 5)
    ds = _base(n, 20, steps, seed)
    rng = np.random.default_rng(seed)
    train = np.flatnonzero(ds["split"].values == "train")
    rank = np.full(ds.sizes["individual"], -1)
    rank[train] = rng.permutation(len(train))  # groups follow rank, not the store's order
    ds = ds.assign_coords(rank=("individual", rank))
    target = _group_accuracy(steps)
    by_rank = train[np.argsort(rank[train])]
    for g, members in enumerate(np.array_split(by_rank, SEQUENTIAL["n_groups"])):
        n_facts = len(members) * 6
        order = rng.permutation(n_facts)
        correct = order[None, :] < np.round(target[:, g] * n_facts)[:, None]
        _facts_from(ds, members, correct.reshape(len(steps), len(members), 6))
    config = json.loads(ds.attrs["config"])
    config["sampling"].update(kind="sequential", n_groups=SEQUENTIAL["n_groups"], n_repeats=SEQUENTIAL["n_repeats"])
    config["train"].update(steps=SEQUENTIAL["steps"])
    set_config(ds, config)
    return ds, target
