"""``phasefit sample``: biographies exactly as the model sees them, with their facts."""

from __future__ import annotations

import torch

from logstore.schema import ATTRIBUTES
from trainer.batches import Biographies, decode
from trainer.config import Config
from trainer.sampling import Sampler, build_stages
from trainer.world import build_world


def format_samples(config: Config, n: int = 5, seed: int = 0) -> str:
    """``n`` training biographies from the first stage of the config's schedule, as text.

    Tokens are separated by spaces; each value is wrapped in [ ]. Below each biography: the
    individual's split, frequency rank and six facts.
    """
    world = build_world(config.world, config.seed)
    bios = Biographies(world)
    stages = build_stages(config.sampling, world, config.train.steps, config.train.batch_size)
    generator = torch.Generator().manual_seed(seed)
    individuals = Sampler(stages, world.n).sample(0, n, generator)
    batch = bios.assemble(individuals, *bios.random_layout(individuals, generator))
    blocks = []
    for b, i in enumerate(individuals.tolist()):
        facts = "\n".join(f"    {a:<13} {world.fact(i, a)}" for a in ATTRIBUTES)
        blocks.append(f"# individual {i} ({world.split[i]}, rank {world.rank[i]}): {world.full_name(i)}\n"
                      f"{decode(world, batch.tokens[b], batch.value_pos[b])}\n{facts}")
    header = (f"# {world.n} individuals, vocabulary of {len(world.vocab)} words, "
              f"biographies of at most {world.seq_len} tokens; schedule: {stages[0].label}")
    return "\n\n".join([header, *blocks])
