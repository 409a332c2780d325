"""Benchmark of phasefit detect: one store at the paper's scale, many small runs, scaling.

    python benchmarks/bench_detect.py            # paper scale: 64k trained + 16k held-out
                                                 # individuals x 6 attributes x 200 evaluations,
                                                 # then 100 runs of 1k individuals, then scaling
    python benchmarks/bench_detect.py --small    # the same measurements, small and quick
    python benchmarks/bench_detect.py --select   # the detector-selection measurements (accuracy
                                                 # and speed of every ruptures search x cost, and of
                                                 # the threshold rules and segmented fits)
    python benchmarks/bench_detect.py --long-curve  # only phasefit detect --curve on a CSV of 10^6
                                                 # rows (--small: 10^5): wall time and peak memory

Runs come from ``phasefit.simulate`` and are written through ``logstore.RunWriter``; what is
timed is what a user runs: ``phasefit.detect(logstore.open_run(path))`` with every per-fact
analysis (acquisition steps, exposures, decile and attribute summaries, acquired fractions),
200 bootstrap replicates, the hallucination onset and gap, method auto; and the command
``phasefit detect RUNS_DIR --json`` in a fresh interpreter, and ``phasefit detect --curve``
on a long CSV (every training step), whose peak resident memory is measured too. Two evaluation plans at paper
scale: "full" (every fact at every step: the most work) and "subset" (heavier than the
trainer's default plan: 4096 individuals per split at every step, everyone at 24 steps). Prints a table, then one
JSON object per measurement: {"bench", "metric", "value", "unit", "device", "config"}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import phasefit  # noqa: E402
from phasefit.simulate import simulate, to_store  # noqa: E402


@dataclass
class Scale:
    n_train: int = 64_000
    n_heldout: int = 16_000
    steps: int = 200
    n_runs: int = 100
    run_individuals: int = 1000
    run_heldout: int = 250
    run_counts: tuple = (10, 30, 100)
    individuals: tuple = (1000, 4000, 16000, 64000)
    evals: tuple = (50, 100, 200, 400)
    evals_individuals: int = 4000
    plans: tuple = ("full", "subset")
    curve_rows: int = 1_000_000


SMALL = Scale(n_train=8000, n_heldout=2000, n_runs=20, run_counts=(5, 20), individuals=(1000, 4000),
              evals=(50, 200), evals_individuals=1000, curve_rows=100_000)


def device() -> str:
    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu: {model}, {os.cpu_count()} cores"


def load() -> float:
    """The 1-minute load average: other work on the machine slows every figure down."""
    return os.getloadavg()[0]


@dataclass
class Report:
    rows: list = field(default_factory=list)
    device: str = field(default_factory=device)

    def add(self, metric: str, value: float, unit: str, config: dict, label: str) -> None:
        self.rows.append((metric, value, unit, {**config, "load_1min": round(load(), 2)}, label))
        print(f"  {label:58s} {value:10.3f} {unit}", flush=True)

    def emit(self) -> None:
        for metric, value, unit, config, _ in self.rows:
            print(json.dumps({"bench": "detect", "metric": metric, "value": round(value, 6), "unit": unit,
                              "device": self.device, "config": config}))


def timed(fn, repeats: int = 1):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def cli(*args: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "phasefit.cli", *args], cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"phasefit {' '.join(args)} failed:\n{proc.stderr}")
    return elapsed


def bench_paper(scale: Scale, scratch: Path, report: Report) -> None:
    import logstore

    print(f"one run at scale: {scale.n_train} trained + {scale.n_heldout} held-out individuals x 6 attributes x "
          f"{scale.steps} evaluations", flush=True)
    timed(lambda: phasefit.detect(simulate(n_individuals=200, n_heldout=20)))  # imports and caches, not timed
    for plan in scale.plans:
        subset = 4096 if plan == "subset" else 0
        ds = simulate(n_individuals=scale.n_train, n_heldout=scale.n_heldout, n_evals=scale.steps, eval_subset=subset,
                      n_full=24, seed=0)
        config = {"n_train": scale.n_train, "n_heldout": scale.n_heldout, "steps": ds.sizes["step"], "plan": plan,
                  "n_boot": 200, "method": "auto", "per_fact": True}
        seconds, _ = timed(lambda: phasefit.detect(ds))
        report.add(f"detect_in_memory_{plan}_s", seconds, "s", config, f"detect, in-memory Dataset ({plan} plan)")
        path = scratch / f"paper-{plan}"
        if not (path / "metrics.zarr").exists():
            start = time.perf_counter()
            to_store(ds, path)
            print(f"  (wrote {path} in {time.perf_counter() - start:.0f} s)", flush=True)
        del ds
        seconds, phases = timed(lambda: phasefit.detect(logstore.open_run(path)))
        assert phases.t2 is not None, phases.notes
        report.add(f"detect_store_{plan}_s", seconds, "s", config, f"detect(open_run(store)) ({plan} plan)")
        seconds = cli("detect", str(path), "--json")
        report.add(f"cli_store_{plan}_s", seconds, "s", config, f"phasefit detect RUN --json, fresh process ({plan})")


def bench_many(scale: Scale, scratch: Path, report: Report) -> None:
    folder = scratch / f"runs-{scale.run_individuals}"
    print(f"{scale.n_runs} runs of {scale.run_individuals} + {scale.run_heldout} individuals x 6 x {scale.steps} "
          f"evaluations", flush=True)
    names = []
    for k in range(scale.n_runs):
        path = folder / f"run{k:03d}"
        names.append(path)
        if not (path / "metrics.zarr").exists():
            n = scale.run_individuals
            ds = simulate(n_individuals=n, n_heldout=scale.run_heldout, n_evals=scale.steps, seed=k,
                          t2=4000 * (1 + 0.2 * (k % 5)), t3=11000 + 800 * (k % 5))
            to_store(ds, path)
    for count in scale.run_counts:
        chosen = [str(p) for p in names[:count]]
        args = [str(folder)] if count == scale.n_runs else chosen
        seconds = cli("detect", *args, "--json")
        config = {"runs": count, "individuals": scale.run_individuals, "heldout": scale.run_heldout,
                  "steps": scale.steps, "n_boot": 200, "method": "auto"}
        report.add(f"cli_runs_{count}_s", seconds, "s", config, f"phasefit detect, {count} runs, fresh process")
        report.add(f"cli_runs_{count}_per_run_s", seconds / count, "s", config, "  per run")
    seconds = cli("detect", str(folder), "--json", "--workers", "2")
    config = {"runs": scale.n_runs, "individuals": scale.run_individuals, "workers": 2, "n_boot": 200, "method": "auto"}
    report.add(f"cli_runs_{scale.n_runs}_workers2_s", seconds, "s", config,
               f"phasefit detect --workers 2, {scale.n_runs} runs, fresh process")


def bench_scaling(scale: Scale, report: Report) -> None:
    print("growth with individuals and evaluation steps (in-memory Dataset, detect with everything)", flush=True)
    for n in scale.individuals:
        ds = simulate(n_individuals=n, n_heldout=n // 4, n_evals=scale.steps, seed=1)
        seconds, _ = timed(lambda: phasefit.detect(ds), repeats=1 if n > 10_000 else 3)
        report.add(f"detect_individuals_{n}_s", seconds, "s", {"individuals": n, "heldout": n // 4,
                                                                "steps": ds.sizes["step"]}, f"{n} individuals (+{n // 4} held-out)")
        del ds
    for n_evals in scale.evals:
        n = scale.evals_individuals
        ds = simulate(n_individuals=n, n_heldout=n // 4, n_evals=n_evals, seed=1)
        seconds, _ = timed(lambda: phasefit.detect(ds), repeats=3)
        report.add(f"detect_steps_{n_evals}_s", seconds, "s", {"individuals": n, "steps": ds.sizes["step"]},
                   f"{ds.sizes['step']} evaluation steps ({n} individuals)")


# Run by a fresh, small interpreter: Linux keeps a process's peak RSS across exec, so a command
# started from this (large) process directly would report this process's size as its peak.
MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.call(sys.argv[1:])
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)
"""


def peak_run(args: list[str]) -> tuple[float, float, str]:
    """Run ``args``; return its wall time (s), the peak resident memory of that one process
    (MiB) and its standard output."""
    proc = subprocess.run([sys.executable, "-c", MEASURE, *args], cwd=ROOT, capture_output=True, text=True)
    *out, last = proc.stdout.rstrip("\n").split("\n")
    seconds, peak_kib, code = last.split()
    if code != "0":
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr}")
    return float(seconds), int(peak_kib) / 1024, "\n".join(out)  # ru_maxrss: KiB on Linux


def bench_long_curve(scale: Scale, scratch: Path, report: Report) -> None:
    """``phasefit detect --curve`` on a CSV with a row per training step: a broken line in
    log-step (corners 320, 4000, 10400 of 16k steps; B 5, final 0.5 nats) with 1% noise."""
    n = scale.curve_rows
    print(f"phasefit detect --curve on a CSV of {n} rows", flush=True)
    path = scratch / f"curve-{n}.csv"
    if not path.exists():
        step = np.linspace(0, 16_000, n)
        x, (x1, x2, x3) = np.log1p(step), np.log1p([320, 4000, 10_400])
        loss = np.where(x < x1, 10 - 5 * x / x1, np.where(x < x2, 5, np.where(x < x3, 5 - 4.5 * (x - x2) / (x3 - x2), 0.5)))
        loss *= 1 + 0.01 * np.random.default_rng(0).standard_normal(n)
        path.write_text("step,loss\n" + "\n".join(map("{:.4f},{:.6g}".format, step.tolist(), loss.tolist())) + "\n")
    seconds, peak, out = peak_run([sys.executable, "-m", "phasefit.cli", "detect", "--curve", str(path), "--baseline",
                                   "5", "--json"])
    row = json.loads(out)[0]
    config = {"rows": n, "csv_mib": round(path.stat().st_size / 2**20, 1), "method": "auto",
              "found": [round(row[k]) if row[k] is not None else None for k in ("t1", "t2", "t3")]}
    report.add(f"cli_curve_{n}_rows_s", seconds, "s", config, f"phasefit detect --curve, {n} rows, fresh process")
    report.add(f"cli_curve_{n}_rows_peak_rss_mib", peak, "MiB", config, "  its peak resident memory")


def bench_select(report: Report, seeds: int = 3) -> None:
    """Accuracy (error in % of the run, worst over scenarios) and time of each candidate."""
    from phasefit.summary import population_curves, split_curve
    from phasefit.detectors import ChangepointDetector, SegmentedFitDetector, ThresholdDetector
    from phasefit.simulate import truth

    scenarios = [(320, 4000, 10400), (200, 1500, 5000), (500, 8000, 14000)]
    noises = (0.002, 0.01, 0.03)
    curves = []
    for t1, t2, t3 in scenarios:
        for noise in noises:
            for seed in range(seeds):
                ds = simulate(n_individuals=1000, n_heldout=10, noise=noise, seed=seed, t1=t1, t2=t2, t3=t3)
                curves.append((noise, split_curve(ds, population_curves(ds)), truth(ds)))
    candidates = [("threshold", ThresholdDetector()), ("changepoint line (default)", ChangepointDetector())]
    for search in ("pelt", "binseg", "bottomup", "window", "dynp"):
        for cost in ("l2", "clinear"):
            if (search, cost) != ("dynp", "clinear"):  # exact search with ruptures' Python cost: minutes
                candidates.append((f"changepoint {search}/{cost}", ChangepointDetector(search=search, cost=cost)))
    candidates += [("fit segmented", SegmentedFitDetector()), ("fit smooth", SegmentedFitDetector(model="smooth"))]
    print(f"detector selection: worst |error| over {len(scenarios)} boundary sets x {seeds} seeds, % of the run, "
          f"at step noise {', '.join(map(str, noises))}; median time per fit", flush=True)
    for name, detector in candidates:
        worst = {n: 0.0 for n in noises}
        missing, times = 0, []
        for noise, curve, true in curves:
            start = time.perf_counter()
            found = detector.clone().fit(curve).boundaries_
            times.append(time.perf_counter() - start)
            for key in ("t1", "t2", "t3"):
                value = getattr(found, key)
                if value is None:
                    missing += 1
                    worst[noise] = max(worst[noise], 100.0)
                else:
                    worst[noise] = max(worst[noise], 100 * abs(value - true[key]) / curve.run_length)
        text = "  ".join(f"{n}: {w:5.2f}" for n, w in worst.items())
        print(f"  {name:28s} {text}   missing {missing:2d}   {1000 * np.median(times):7.2f} ms", flush=True)
        for noise, w in worst.items():
            report.rows.append((f"select_{name.replace(' ', '_').replace('/', '_')}_noise{noise}_max_error_pct", w, "%",
                                {"detector": name, "noise": noise, "seeds": seeds}, name))
        report.rows.append((f"select_{name.replace(' ', '_').replace('/', '_')}_ms", 1000 * float(np.median(times)), "ms",
                            {"detector": name}, name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="a small, quick configuration")
    parser.add_argument("--select", action="store_true", help="only the detector-selection measurements")
    parser.add_argument("--long-curve", action="store_true", help="only phasefit detect --curve on a long CSV")
    parser.add_argument("--dir", help="scratch folder for the stores (kept, and reused when run again)")
    args = parser.parse_args()
    scale = SMALL if args.small else Scale()
    report = Report()
    print(f"device: {report.device}; load average {load():.2f}; scale: {asdict(scale)}", flush=True)
    if args.select:
        bench_select(report)
        report.emit()
        return
    scratch = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_detect_"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        if args.long_curve:
            bench_long_curve(scale, scratch, report)
            report.emit()
            return
        bench_paper(scale, scratch, report)
        bench_many(scale, scratch, report)
        bench_scaling(scale, report)
        bench_long_curve(scale, scratch, report)
    finally:
        if not args.dir:
            shutil.rmtree(scratch, ignore_errors=True)
    report.emit()


if __name__ == "__main__":
    main()
