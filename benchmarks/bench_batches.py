"""Biographies per second from the device-side batch assembly, next to one training step.

    python benchmarks/bench_batches.py [--device cpu|cuda] [--presets tiny,paper] [--repeats 20]

Target (issue 2): assembling a batch costs under 5% of a training step of the same preset.
Prints a table and one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from rows import print_rows  # benchmarks/rows.py
from trainer.batches import Biographies
from trainer.config import load_config
from trainer.loop import make_optimizer, make_train_step
from trainer.model import Transformer
from trainer.sampling import Sampler, build_stages
from trainer.world import build_world

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median seconds per call, after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def bench(preset: str, device: torch.device, repeats: int) -> list[dict]:
    config = load_config(ROOT / "configs" / f"{preset}.toml")
    world = build_world(config.world, config.seed)
    bios = Biographies(world, device)
    b = config.train.batch_size
    sampler = Sampler(build_stages(config.sampling, world, config.train.steps, b), world.n, device)
    generator = torch.Generator(device).manual_seed(0)

    def assemble():
        ids = sampler.sample(0, b, generator)
        return bios.assemble(ids, *bios.random_layout(ids, generator))

    model = Transformer(config.model, len(world.vocab), world.seq_len).to(device)
    step = make_train_step(model, make_optimizer(model, config, fused=device.type == "cuda"), config, device, bios.pad)
    tokens = assemble().tokens

    t_batch = timed(assemble, repeats, device)
    t_step = timed(lambda: step(tokens), max(3, repeats // 4), device)
    name = f"{preset} (batch {b}, {world.n} individuals)"
    return [
        {"bench": "batches", "metric": "biographies_per_s", "value": b / t_batch, "unit": "1/s", "device": str(device), "config": name},
        {"bench": "batches", "metric": "assembly_ms", "value": 1e3 * t_batch, "unit": "ms", "device": str(device), "config": name},
        {"bench": "batches", "metric": "train_step_ms", "value": 1e3 * t_step, "unit": "ms", "device": str(device), "config": name},
        {"bench": "batches", "metric": "assembly_share_of_step", "value": t_batch / t_step, "unit": "ratio", "device": str(device), "config": name},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--presets", default="tiny,paper")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = [row for preset in args.presets.split(",") for row in bench(preset, device, args.repeats)]
    print_rows(rows)


if __name__ == "__main__":
    main()
