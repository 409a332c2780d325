"""Sampling schedules: the individuals drawn follow each schedule's distribution."""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from tests.helpers import small_world_config
from trainer.config import SamplingConfig
from trainer.sampling import Sampler, build_stages
from trainer.world import build_world

STEPS, BATCH = 1000, 64


@pytest.fixture(scope="module")
def world():
    c = small_world_config()
    return build_world(c.world, c.seed)


def draw(world, sampling: SamplingConfig, step: int, n_batches: int = 200, seed: int = 0):
    sampler = Sampler(build_stages(sampling, world, STEPS, BATCH), world.n)
    g = torch.Generator().manual_seed(seed)
    ids = torch.cat([sampler.sample(step, BATCH, g) for _ in range(n_batches)]).numpy()
    return np.bincount(ids, minlength=world.n), sampler


def assert_fits(counts: np.ndarray, p: np.ndarray) -> None:
    """Chi-square goodness of fit, bins merged so that every expected count is at least 5."""
    assert counts[p == 0].sum() == 0, "drew individuals the schedule never samples"
    order = np.argsort(-p[p > 0])
    observed, expected = counts[p > 0][order], (p[p > 0] * counts.sum())[order]
    groups = np.minimum(np.cumsum(expected) // 5, (expected.sum() // 5) - 1).astype(int)
    groups = np.unique(groups, return_inverse=True)[1]
    obs, exp = np.bincount(groups, observed), np.bincount(groups, expected)
    assert chisquare(obs, exp).pvalue > 1e-3


@pytest.mark.parametrize("sampling", [
    SamplingConfig(kind="uniform"),
    SamplingConfig(kind="power_law", alpha=0.8),
    SamplingConfig(kind="power_law", alpha=1.5),
    SamplingConfig(kind="celebrities", celebrities=20, celebrity_weight=8.0),
    SamplingConfig(kind="finetune", replay_weight=0.5),
], ids=lambda s: f"{s.kind}")
def test_sampled_frequencies_match_the_distribution(world, sampling):
    counts, sampler = draw(world, sampling, step=0)
    p = sampler.probabilities(0)
    assert_fits(counts, p)
    rank = world.rank
    train = world.split == "train"
    if sampling.kind == "power_law":
        expected = (rank[train] + 1.0) ** -sampling.alpha
        np.testing.assert_allclose(p[train], expected / expected.sum())
    if sampling.kind == "celebrities":
        celebrity = train & (rank < 20)
        assert p[celebrity].min() == pytest.approx(8 * p[train & ~celebrity].max())
    if sampling.kind == "finetune":
        assert p[world.split == "finetune"].sum() == pytest.approx(1 / 1.5)
        assert p[train].sum() == pytest.approx(0.5 / 1.5)
        assert p[world.split == "heldout"].sum() == 0


def test_heldout_individuals_are_never_trained_on(world):
    for kind in ("uniform", "power_law", "celebrities"):
        counts, _ = draw(world, SamplingConfig(kind=kind, alpha=1.0, celebrities=5, celebrity_weight=3), step=0)
        assert counts[world.split != "train"].sum() == 0


def test_warmup_trains_on_the_first_ranks_for_the_given_epochs(world):
    sampling = SamplingConfig(kind="warmup", warmup_individuals=32, warmup_epochs=4)
    stages = build_stages(sampling, world, STEPS, BATCH)
    assert [s.stop for s in stages] == [2, STEPS]  # 4 epochs of 32 biographies at 64 per step
    counts, sampler = draw(world, sampling, step=0, n_batches=100)
    assert set(np.flatnonzero(counts)) <= set(np.flatnonzero((world.rank >= 0) & (world.rank < 32)))
    assert_fits(counts, sampler.probabilities(0))
    counts, sampler = draw(world, sampling, step=2)
    assert_fits(counts, sampler.probabilities(2))
    assert (sampler.probabilities(2)[world.split == "train"] > 0).all()


def test_sequential_groups_are_visited_in_order_and_repeated(world):
    sampling = SamplingConfig(kind="sequential", n_groups=3, n_repeats=2)
    stages = build_stages(sampling, world, STEPS, BATCH)
    assert len(stages) == 6 and stages[0].start == 0 and stages[-1].stop == STEPS
    groups = [set(world.rank[s.ids].tolist()) for s in stages]
    assert groups[0] == set(range(100)) and groups[1] == set(range(100, 200)) and groups[2] == set(range(200, 300))
    assert groups[3:] == groups[:3]
    for stage in stages:
        counts, sampler = draw(world, sampling, step=stage.start, n_batches=50)
        assert set(np.flatnonzero(counts)) <= set(stage.ids.tolist())


def test_exposures_count_biographies_per_individual(world):
    sampler = Sampler(build_stages(SamplingConfig(kind="power_law", alpha=1.0), world, STEPS, BATCH), world.n)
    g = torch.Generator().manual_seed(5)
    drawn = torch.cat([sampler.sample(s, BATCH, g) for s in range(30)])
    assert torch.equal(sampler.exposures.long(), torch.bincount(drawn, minlength=world.n))


def test_stages_say_their_bounds_and_the_ranks_they_sample(world):
    """The store's ``stages`` attribute: start, end, label and the inclusive train-rank range."""
    warm = build_stages(SamplingConfig(kind="warmup", warmup_individuals=32, warmup_epochs=4), world, STEPS, BATCH)
    assert [s.describe() for s in warm] == [{"start": 0, "end": 2, "label": "warm-up on 32", "ranks": [0, 31]},
                                            {"start": 2, "end": STEPS, "label": "uniform", "ranks": [0, 299]}]
    sequential = build_stages(SamplingConfig(kind="sequential", n_groups=3, n_repeats=2), world, STEPS, BATCH)
    bounds = [0, 167, 333, 500, 667, 833, STEPS]
    assert [s.describe() for s in sequential] == [
        {"start": bounds[v], "end": bounds[v + 1], "label": f"group {v % 3}",
         "ranks": [[0, 99], [100, 199], [200, 299]][v % 3]} for v in range(6)]
    finetune = build_stages(SamplingConfig(kind="finetune", replay_weight=0.5), world, STEPS, BATCH)
    assert [s.describe()["ranks"] for s in finetune] == [None]  # new individuals are outside the train split
