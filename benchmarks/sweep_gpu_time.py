"""GPU time of each study sweep, estimated from measured rates (whole sweeps are too long to time).

    python benchmarks/sweep_gpu_time.py configs/sweeps/*.toml [--ms-per-step 9.2] [--probes-per-s 38000]

A run costs its start (world, store, compilation), its training steps and its probes (one
evaluation biography per evaluated individual and step, from the evaluation plan). The
default rates come from the paper preset's default run (batch 128, 16k steps) measured whole
on one H200 with torch 2.11: 14 s before its second step (setup 10.1 s; the first step 3.6 s,
with torch.compile's cache warm, as for every run of a sweep but the first), 9.2 ms per step,
and 35.2 s probing 1.35M biographies in 193 evaluations (docs/trainer.md, "Measured on a GPU").
Those probes padded every biography to ``seq_len``; they now compute about 60% of those
positions, so the probes' share of these estimates is on the high side until remeasured.
"""

from __future__ import annotations

import argparse

from trainer.config import Config
from trainer.plan import dense_size, spaced_steps
from trainer.sweep import load_sweep


def probes(c: Config) -> int:
    """Evaluation biographies of a run's plan (see trainer.plan.build_plan)."""
    e, w = c.eval, c.world
    splits = {"train": w.n_individuals, "heldout": w.n_heldout, "finetune": w.n_finetune}
    dense = sum(n if dense_size(e, split) == 0 else min(n, dense_size(e, split)) for split, n in splits.items())
    everyone = w.n_individuals + w.n_heldout + w.n_finetune
    n_evals = len(spaced_steps(c.train.steps, e.n_evals, e.log_fraction))
    n_full = n_evals if dense == everyone else min(n_evals, e.n_full)
    return n_evals * dense + n_full * (everyone - dense)


def run_seconds(c: Config, start_s: float, ms_per_step: float, probes_per_s: float) -> float:
    patched = 4 / 3 if c.patch.reference else 1.0  # the reference's forward pass: about a third of a step
    return start_s + patched * c.train.steps * ms_per_step / 1e3 + probes(c) * patched / probes_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+")
    parser.add_argument("--start-s", type=float, default=14.0, help="seconds before the second step of a run")
    parser.add_argument("--ms-per-step", type=float, default=9.2)
    parser.add_argument("--probes-per-s", type=float, default=38_000.0)
    args = parser.parse_args()
    print(f"{'sweep':<42} {'runs':>5} {'GPU hours':>10}")
    for path in args.sweeps:
        sweep = load_sweep(path)
        seconds = sum(run_seconds(r.config, args.start_s, args.ms_per_step, args.probes_per_s) for r in sweep.runs)
        print(f"{path:<42} {len(sweep.runs):>5} {seconds / 3600:>10.2f}")


if __name__ == "__main__":
    main()
