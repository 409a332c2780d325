"""GPU time of each study sweep, estimated from measured rates (whole sweeps are too long to time).

    python benchmarks/sweep_gpu_time.py configs/sweeps/*.toml [--ms-per-step 9.2] [--probes-per-s 38000]
        [--pack K] [--pack-speedup 2.0] [--pack-probe-speedup 1.0] [--pack-bench OUT/pack.jsonl]

A run costs its start (world, store, compilation), its training steps and its probes (one
evaluation biography per evaluated individual and step, from the evaluation plan). The
default rates come from the paper preset's default run (batch 128, 16k steps) measured whole
on one H200 with torch 2.11: 14 s before its second step (setup 10.1 s; the first step 3.6 s,
with torch.compile's cache warm, as for every run of a sweep but the first), 9.2 ms per step,
and 35.2 s probing 1.35M biographies in 193 evaluations (docs/trainer.md, "Measured on a GPU").
Those probes padded every biography to ``seq_len``; they now compute about 60% of those
positions, so the probes' share of these estimates is on the high side until remeasured.

Packed: the sweep's runs grouped as ``phasefit sweep`` groups them (``trainer.pool.pack_runs``
over the runs that can start together: those that need no other run of the sweep, then those
that need only those, ...), in packs of at most ``--pack`` K (default: the sweep's ``pack``,
else 8, ``trainer.pool.default_pack`` for a GPU). A pack of k members takes ``steps`` steps of
a packed step whose time grows linearly from one run's step (k = 1) to that of a full pack, K
run-steps at ``--pack-speedup`` times one run's run-steps per second (``bench_train.py --pack
K`` measures it; the default 2.0 is the paper preset's target at K = 8, unmeasured on a GPU
until ``benchmarks/gpu_checks.sh OUT pack`` has run). Each member still pays its own start
(world, plan, store) and its own probes, at ``--pack-probe-speedup`` times the solo rate (1.0:
the batched probes' gain on a GPU is unmeasured). A patched run trains alone. ``--pack-bench``
takes K and both speedups from ``bench_train.py --pack K``'s JSON lines of the paper preset
(``gpu_checks.sh``'s pack.jsonl) instead.
"""

from __future__ import annotations

import argparse
import json
import re

from trainer.config import Config, ConfigError
from trainer.plan import n_probes
from trainer.pool import default_pack, pack_runs
from trainer.sweep import RunSpec, load_sweep


def run_seconds(c: Config, start_s: float, ms_per_step: float, probes_per_s: float) -> float:
    patched = 4 / 3 if c.patch.reference else 1.0  # the reference's forward pass: about a third of a step
    return start_s + patched * c.train.steps * ms_per_step / 1e3 + n_probes(c) * patched / probes_per_s


def waves(runs: list[RunSpec]) -> list[list[RunSpec]]:
    """The runs by when they can start: those that need no other run of the sweep first, then
    those that need only those, and so on (a sweep packs the runs that are ready together)."""
    by_name = {r.name: r for r in runs}
    depth: dict[str, int] = {}

    def depth_of(run: RunSpec) -> int:
        if run.name not in depth:
            depth[run.name] = 1 + max((depth_of(by_name[n]) for n in run.needs if n in by_name), default=-1)
        return depth[run.name]

    out: list[list[RunSpec]] = [[] for _ in range(1 + max(map(depth_of, runs), default=-1))]
    for run in runs:
        out[depth_of(run)].append(run)
    return out


def pack_seconds(pack: list[RunSpec], args: argparse.Namespace) -> float:
    """GPU seconds of one pack (one run alone when it has one member)."""
    if len(pack) == 1:
        return run_seconds(pack[0].config, args.start_s, args.ms_per_step, args.probes_per_s)
    full = args.pack * args.ms_per_step / args.pack_speedup  # ms per step of a pack of K
    ms = args.ms_per_step + (len(pack) - 1) * (full - args.ms_per_step) / (args.pack - 1)
    probed = sum(n_probes(r.config) for r in pack) / (args.probes_per_s * args.pack_probe_speedup)
    return len(pack) * args.start_s + pack[0].config.train.steps * ms / 1e3 + probed


def measured_pack(path: str) -> tuple[int, float, float]:
    """(K, pack speedup, probe speedup) of the paper preset in ``bench_train.py --pack K``'s JSON lines."""
    rows = [json.loads(line) for line in open(path) if line.startswith("{")]
    found = {r["metric"]: r["value"] for r in rows if r.get("bench") == "train_pack" and r["config"].startswith("paper ")}
    k = next((int(m[1]) for name in found if (m := re.fullmatch(r"pack(\d+)_over_solo", name))), None)
    if k is None:
        raise ValueError(f"{path}: no paper-preset measurement of bench_train.py --pack")
    return k, found[f"pack{k}_over_solo"], 1 / found[f"pack{k}_evaluation_batched_over_member_by_member"]


def positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a value > 0, got {text}")
        return value

    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+")
    parser.add_argument("--start-s", type=float, default=14.0, help="seconds before the second step of a run")
    parser.add_argument("--ms-per-step", type=float, default=9.2)
    parser.add_argument("--probes-per-s", type=float, default=38_000.0)
    parser.add_argument("--pack", type=positive(int), metavar="K",
                        help="runs per pack at most (default: the sweep's pack, else 8)")
    parser.add_argument("--pack-speedup", type=positive(float), default=2.0,
                        help="run-steps/s of a full pack over one run's (default 2.0: a target, unmeasured on a GPU)")
    parser.add_argument("--pack-probe-speedup", type=positive(float), default=1.0,
                        help="a packed member's probe rate over a run's alone (default 1.0: unmeasured on a GPU)")
    parser.add_argument("--pack-bench", metavar="JSONL",
                        help="K and both speedups from bench_train.py --pack's JSON lines of the paper preset")
    args = parser.parse_args()
    if args.pack_bench:
        try:
            args.pack, args.pack_speedup, args.pack_probe_speedup = measured_pack(args.pack_bench)
        except (OSError, ValueError, KeyError) as err:
            parser.error(f"--pack-bench: {err}")
        print(f"packs of at most {args.pack}: {args.pack_speedup:.2f}x the run-steps/s of runs alone, probes "
              f"{args.pack_probe_speedup:.2f}x (measured, {args.pack_bench})")
    print(f"{'sweep':<42} {'runs':>5} {'packs':>6} {'GPU hours solo':>15} {'packed':>7}")
    totals = [0, 0, 0.0, 0.0]
    for path in args.sweeps:
        try:
            sweep = load_sweep(path)
        except ConfigError as err:
            parser.error(str(err))
        k = args.pack or sweep.pack or default_pack("cuda")
        solo = sum(run_seconds(r.config, args.start_s, args.ms_per_step, args.probes_per_s) for r in sweep.runs)
        packs = [pack for wave in waves(sweep.runs) for pack in pack_runs(wave, k)]
        packed = sum(pack_seconds(pack, argparse.Namespace(**{**vars(args), "pack": k})) for pack in packs)
        print(f"{path:<42} {len(sweep.runs):>5} {len(packs):>6} {solo / 3600:>15.2f} {packed / 3600:>7.2f}")
        totals = [totals[0] + len(sweep.runs), totals[1] + len(packs), totals[2] + solo, totals[3] + packed]
    if len(args.sweeps) > 1:
        print(f"{'all':<42} {totals[0]:>5} {totals[1]:>6} {totals[2] / 3600:>15.2f} {totals[3] / 3600:>7.2f}")


if __name__ == "__main__":
    main()
