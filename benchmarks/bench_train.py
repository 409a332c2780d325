"""Training speed: ms per step, tokens/s, MFU, peak memory, the metrics tax, and a naive baseline.

    python benchmarks/bench_train.py --preset tiny [--device cpu] [--steps 30] [--run]
    python benchmarks/bench_train.py --preset paper --device cuda --run     # on a GPU machine
    python benchmarks/bench_train.py --preset tiny --pack 4                  # solo against a pack of 4

Measures, in one process:
- the loop's training step (device-side batches; bf16 + torch.compile on CUDA) against a naive
  baseline (same model and precision, eager, batches written in Python from strings);
- with ``--run``, the preset's default run (``trainer.loop.train``, evaluation plan included):
  its wall time, and the metrics tax (seconds in evaluations / all other seconds);
- on CUDA, the same step without CUDA graphs (``train.cuda_graphs = false``);
- the probes' rate: biographies per second of one evaluation of everyone by the loop's
  Evaluator (bf16 on CUDA, float32 on CPU), and its ratio to the training step's biographies
  per second (on CUDA, with a profile of one evaluation's kernels); at large N also the time
  of one evaluation of the dense subset, and its part that does not scale with biographies;
- MFU against the detected GPU's bf16 peak (dense), and peak memory.
With ``--pack K``, instead: run-steps per second of the loop's training step alone and of a
pack of K members (trainer/pack.py, seeds 0..K-1) at the same config, in one process, batch
assembly included, and their ratio; the seconds of one evaluation of every member (of the
dense subset where the plan has one), member by member and batched (trainer/pack_probes.py),
and their ratio; on CUDA also the peak memory of the pack's steps against its estimate
(``pack.pack_bytes``), and of its evaluations.
Tokens and FLOPs count the padded batch (an eager CPU step skips the columns that are padding
in every row, about 15% of them). Prints a table and one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from logstore.schema import ATTRIBUTES
from rows import print_rows  # benchmarks/rows.py
from trainer.batches import Biographies
from trainer.config import load_config
from trainer.loop import Evaluator, Run, make_optimizer, make_train_step, probe_dtype, train
from trainer.model import Transformer
from trainer.pack import Pack, pack_bytes
from trainer.pack_probes import member_rows
from trainer.plan import build_plan
from trainer.run import prepare_run
from trainer.sampling import Sampler, build_stages
from trainer.text import TEMPLATES, tokenize
from trainer.world import build_world

ROOT = Path(__file__).resolve().parents[1]
# Dense bf16 peaks (TFLOP/s) of common GPUs, by a substring of the device name.
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}


def naive_batch(world, individuals: list[int], rng: torch.Generator) -> torch.Tensor:
    """Biographies the slow way: format strings sample by sample, tokenise, pad."""
    index = {t: i for i, t in enumerate(world.vocab)}
    rows = []
    for i in individuals:
        order = torch.randperm(len(ATTRIBUTES), generator=rng).tolist()
        words = ["<bos>"]
        for a in order:
            t = int(world.train_templates[i, a, torch.randint(world.train_templates.shape[-1], (1,), generator=rng)])
            text = TEMPLATES[ATTRIBUTES[a]][t].format(name=world.full_name(i), value=world.fact(i, ATTRIBUTES[a]))
            words += tokenize(text)
        rows.append([index[w] for w in words])
    out = torch.zeros(len(rows), world.seq_len, dtype=torch.long)
    for r, row in enumerate(rows):
        out[r, : len(row)] = torch.tensor(row)
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_time(step_fn, make_tokens, n: int, device: torch.device) -> float:
    """Seconds per step (batch assembly included), after three warm-up steps."""
    for _ in range(3):
        step_fn(make_tokens())
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        step_fn(make_tokens())
    sync(device)
    return (time.perf_counter() - t) / n


def probe_times(config, world, bios: Biographies, model: Transformer, device: torch.device,
                profile: bool) -> dict[str, float]:
    """The loop's Evaluator (bf16 on CUDA, float32 on CPU) at the plan's two kinds of step:
    biographies per second of one evaluation of everyone, and, where the plan has a dense
    subset, the seconds of one evaluation of the subset alone (the median of five) and its
    fixed part: those seconds less the subset's biographies at the first rate."""
    plan = build_plan(config.eval, world, config.train.steps, config.seed)
    evaluate = Evaluator(world, bios, plan, config.eval.batch_size, config.eval.attention_probe, config.seed,
                         dtype=probe_dtype(device))
    exposures = torch.zeros(world.n, dtype=torch.long, device=device)
    model.eval()

    def seconds(i: int) -> float:  # ends with the results on the host
        sync(device)
        started = time.perf_counter()
        evaluate(model, i, exposures)
        return time.perf_counter() - started

    full = int(np.flatnonzero(plan.full)[0])
    seconds(full)  # warm-up
    out = {"probe_biographies_per_s": len(plan.order) / seconds(full)}
    if not plan.full.all():
        dense = int(np.flatnonzero(~plan.full)[0])
        out["probe_subset_evaluation_s"] = float(np.median([seconds(dense) for _ in range(5)]))
        out["probe_evaluation_overhead_s"] = out["probe_subset_evaluation_s"] - plan.n_dense / out["probe_biographies_per_s"]
    if profile:  # where an evaluation's time goes, for the next optimisation
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        try:  # a profiler problem (no CUPTI) must not cost the measurements
            with torch.profiler.profile(activities=activities) as prof:
                evaluate(model, full, exposures)
            print(prof.key_averages().table(sort_by="device_time_total", row_limit=20))
        except RuntimeError as err:
            print(f"no profile of the probes: {err}")
    model.train()
    return out


def bench(preset: str, device: torch.device, n_steps: int, run: bool, overrides: list[str]) -> list[dict]:
    config = load_config(ROOT / "configs" / f"{preset}.toml", overrides)
    world = build_world(config.world, config.seed)
    bios = Biographies(world, device)
    b = config.train.batch_size
    sampler = Sampler(build_stages(config.sampling, world, config.train.steps, b), world.n, device)
    generator = torch.Generator(device).manual_seed(0)

    def device_batch():
        ids = sampler.sample(0, b, generator)
        return bios.assemble(ids, *bios.random_layout(ids, generator)).tokens

    def loop_step(extra: list[str]) -> tuple[float, float, Transformer]:
        """Seconds per step of the loop's training step, and its peak memory (MiB)."""
        c = load_config(ROOT / "configs" / f"{preset}.toml", overrides + extra)
        model = Transformer(c.model, len(world.vocab), world.seq_len).to(device)
        step = make_train_step(model, make_optimizer(model, c, fused=device.type == "cuda"), c, device, bios.pad)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds = step_time(step, device_batch, n_steps, device)
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else \
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return seconds, peak, model

    fast, peak, model = loop_step([])  # the loop's step as configured (on CUDA: compiled, with CUDA graphs)
    without_graphs = loop_step(["train.cuda_graphs=false"])[0] if device.type == "cuda" else None

    naive_config = load_config(ROOT / "configs" / f"{preset}.toml", overrides + ["train.compile=off"])
    naive_model = Transformer(naive_config.model, len(world.vocab), world.seq_len).to(device)
    naive_step = make_train_step(naive_model, make_optimizer(naive_model, naive_config), naive_config, device, bios.pad)
    cpu_rng = torch.Generator().manual_seed(0)
    n_train = int((world.split == "train").sum())

    def python_batch():
        ids = torch.randint(n_train, (b,), generator=cpu_rng).tolist()
        return naive_batch(world, ids, cpu_rng).to(device)

    naive = step_time(naive_step, python_batch, max(3, n_steps // 3), device)
    probes = probe_times(config, world, bios, model, device, profile=device.type == "cuda")

    tokens = b * (world.seq_len - 1)
    flops = 6 * model.n_params(embeddings=False) * tokens + 6 * model.embed.weight.numel() * tokens \
        + 12 * model.n_layers * config.model.d_model * (world.seq_len - 1) * tokens  # matmuls, logits, attention
    name = f"{preset} (batch {b}, {world.n} individuals)"
    row = dict(bench="train", device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", config=name)
    rows = [
        {**row, "metric": "ms_per_step", "value": 1e3 * fast, "unit": "ms"},
        {**row, "metric": "tokens_per_s", "value": tokens / fast, "unit": "1/s"},
        {**row, "metric": "achieved_tflops", "value": flops / fast / 1e12, "unit": "TFLOP/s"},
        {**row, "metric": "naive_ms_per_step", "value": 1e3 * naive, "unit": "ms"},
        {**row, "metric": "speedup_over_naive", "value": naive / fast, "unit": "ratio"},
        {**row, "metric": "peak_memory", "value": peak, "unit": "MiB"},
        {**row, "metric": "projected_run_min", "value": fast * config.train.steps / 60, "unit": "min (training steps only)"},
        {**row, "metric": "probe_speed_over_training", "value": probes["probe_biographies_per_s"] * fast / b,
         "unit": "ratio of biographies/s (a forward pass alone: about 3)"},
        *({**row, "metric": k, "value": v, "unit": "1/s" if k.endswith("per_s") else "s"} for k, v in probes.items()),
    ]
    if without_graphs is not None:
        rows.append({**row, "metric": "ms_per_step_without_graphs", "value": 1e3 * without_graphs, "unit": "ms"})
    if device.type == "cuda":
        peak_tflops = next((v for k, v in GPU_PEAK_TFLOPS.items() if k in torch.cuda.get_device_name()), None)
        if peak_tflops:
            rows.append({**row, "metric": "mfu", "value": flops / fast / 1e12 / peak_tflops, "unit": "ratio"})

    if run:
        # The preset's default run, evaluation plan included: its wall time, and the metrics tax
        # (seconds in evaluations / seconds in everything else).
        with tempfile.TemporaryDirectory() as tmp:
            prepare_run(config, Path(tmp) / "run")
            summary = train(config, Path(tmp) / "run", device, progress=False)
        evals = summary.timings.get("evaluations", 0.0)
        rows += [
            {**row, "metric": "run_wall_s", "value": summary.wall_s, "unit": f"s for {summary.steps} steps"},
            *({**row, "metric": f"run_{part}_s", "value": seconds, "unit": "s"} for part, seconds in summary.timings.items()),
            {**row, "metric": "metrics_tax", "value": evals / (summary.wall_s - evals), "unit": "ratio"},
            {**row, "metric": "run_final_accuracy", "value": summary.final_accuracy, "unit": "trained facts"},
        ]
    return rows


def pack_probe_times(packed: Pack, device: torch.device, repeats: int = 3) -> tuple[float, float]:
    """Seconds of one evaluation of every member of ``packed``, of the plan's commonest kind
    (its dense subset where it has one, else everyone): member by member on their solo models
    (``Run.probe``'s computation) and batched (``Pack.probe``'s); the median of ``repeats``
    each, taken in turns (a busy machine slows both alike), after one warm-up, results on the host."""
    runs, plan = packed.runs, packed.runs[0].plan
    step = int(plan.steps[np.flatnonzero(~plan.full)[0]]) if not plan.full.all() else 0
    ways = {"member by member": lambda: [r.evaluate(r.model, r.eval_index[step], r.sampler.exposures) for r in runs],
            "batched": lambda: member_rows(packed.params, runs, step, probe_dtype(device))}
    times = defaultdict(list)
    for _ in range(repeats + 1):
        for way, evaluate in ways.items():
            sync(device)
            started = time.perf_counter()
            evaluate()
            times[way].append(time.perf_counter() - started)
    return tuple(float(np.median(times[way][1:])) for way in ways)


def bench_pack(preset: str, device: torch.device, n_steps: int, k: int, overrides: list[str]) -> list[dict]:
    """Run-steps per second of one run's training step and of a pack of ``k``, and the ratio."""
    configs = [load_config(ROOT / "configs" / f"{preset}.toml", overrides + [f"seed={s}"]) for s in range(k)]
    c = configs[0]
    with tempfile.TemporaryDirectory() as tmp:
        alone = Run(c, Path(tmp) / "solo", device)
        runs = [Run(config, Path(tmp) / f"run{i}", device) for i, config in enumerate(configs)]
        step = make_train_step(alone.model, alone.optimizer, c, device, alone.bios.pad)
        solo = step_time(step, lambda: alone.batch(0), n_steps, device)
        packed = Pack(runs, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        together = step_time(packed.step_fn, lambda: packed.batches(0), n_steps, device)
        vocab, seq_len = max(len(r.world.vocab) for r in runs), max(r.world.seq_len for r in runs)
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None  # the steps' alone
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        one_by_one, batched = pack_probe_times(packed, device)
        probe_peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
        for run in [alone, *runs]:
            run.writer.close("failed", reason="a benchmark")
    m = c.model
    name = (f"{preset} ({m.n_layers} layers, d_model {m.d_model}, batch {c.train.batch_size}; threads "
            f"{torch.get_num_threads()})")
    row = dict(bench="train_pack", device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", config=name)
    rows = [
        {**row, "metric": "solo_run_steps_per_s", "value": 1 / solo, "unit": "1/s"},
        {**row, "metric": f"pack{k}_run_steps_per_s", "value": k / together, "unit": "1/s"},
        {**row, "metric": f"pack{k}_over_solo", "value": solo * k / together, "unit": "ratio of run-steps/s"},
        {**row, "metric": f"pack{k}_evaluation_member_by_member_s", "value": one_by_one,
         "unit": "s (every member's solo probes)"},
        {**row, "metric": f"pack{k}_evaluation_batched_s", "value": batched, "unit": "s (trainer/pack_probes.py)"},
        {**row, "metric": f"pack{k}_evaluation_batched_over_member_by_member", "value": batched / one_by_one,
         "unit": "ratio of seconds"},
    ]
    if device.type == "cuda":
        estimate = sum(pack_bytes(c, vocab, seq_len, k, device).values())
        rows += [{**row, "metric": f"pack{k}_peak_memory", "value": peak,
                  "unit": "MiB"},
                 {**row, "metric": f"pack{k}_memory_estimate", "value": estimate / 2**20, "unit": "MiB"},
                 {**row, "metric": f"pack{k}_evaluation_peak_memory", "value": probe_peak,
                  "unit": "MiB (the evaluations, gradients still held)"}]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--run", action="store_true", help="also train the preset's default run (wall time, metrics tax)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key of the preset (repeatable)")
    parser.add_argument("--pack", type=int, metavar="K", help="measure solo steps against a pack of K instead")
    args = parser.parse_args()
    if args.pack:
        rows = bench_pack(args.preset, torch.device(args.device), args.steps, args.pack, args.overrides)
    else:
        rows = bench(args.preset, torch.device(args.device), args.steps, args.run, args.overrides)
    print_rows(rows)


if __name__ == "__main__":
    main()
