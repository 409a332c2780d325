"""The evaluation plan: when each fact is probed, and which facts at large N."""

import dataclasses

import numpy as np

from tests.helpers import small_world_config
from trainer.plan import build_plan, spaced_steps
from trainer.world import build_world


def test_steps_are_log_spaced_early_and_include_both_ends():
    steps = spaced_steps(16_000, 200, 0.3)
    assert steps[0] == 0 and steps[-1] == 16_000 and (np.diff(steps) > 0).all()
    assert 180 <= len(steps) <= 201
    assert (steps < 160).sum() >= 20  # the first 1% of the run, where the marginals are learned, is resolved


def test_dense_subsets_are_rank_stratified_and_everyone_is_seen_at_full_steps():
    config = small_world_config()
    world = build_world(config.world, seed=0)
    e = dataclasses.replace(config.eval, n_evals=40, subset=100, heldout_subset=10, n_full=5)
    plan = build_plan(e, world, steps=1000, seed=0)
    dense = plan.order[: plan.n_dense]
    split = world.split[dense]
    assert (split == "train").sum() == 100 and (split == "heldout").sum() == 10 and (split == "finetune").sum() == 20
    ranks = world.rank[dense[split == "train"]]
    assert np.histogram(ranks, bins=10, range=(0, 300))[0].min() >= 9  # every frequency decile
    assert sorted(plan.order) == sorted(np.arange(world.n))  # everyone has a place in the store
    assert 3 <= plan.full.sum() <= 5 and plan.full[0] and plan.full[-1]  # about n_full, both ends included
    assert len(plan.individuals_at(1)) == plan.n_dense or plan.full[1]
    # The same seed gives the same plan; subset 0 evaluates everyone at every step.
    again = build_plan(e, world, steps=1000, seed=0)
    assert (again.order == plan.order).all()
    everyone = build_plan(dataclasses.replace(e, subset=0, heldout_subset=0), world, steps=1000, seed=0)
    assert everyone.full.all() and everyone.n_dense == world.n
