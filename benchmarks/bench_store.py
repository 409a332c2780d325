"""Benchmark of logstore: write throughput, bytes on disk, and both read patterns.

    python benchmarks/bench_store.py             # the paper's scale: 64k trained + 16k held-out
                                                 # individuals, 6 attributes, 200 evaluations
    python benchmarks/bench_store.py --small     # the same measurements, small and quick
    python benchmarks/bench_store.py --layouts   # the chunk-layout sweep behind logstore/schema.py
    python benchmarks/bench_store.py --codecs    # the codec sweep behind logstore/schema.py
    python benchmarks/bench_store.py --decoders  # open_run's chunk reader against zarr-python's own

A synthetic run with every variable of the schema is written through RunWriter, then read
back through open_run. Two evaluation plans: "full" (every fact at every step: the worst
case for the writer and the readers) and "subset" (heavier than the trainer's default
plan: 4096 individuals per split at every step, everyone at 24 of the steps). Prints a table, then one
JSON object per measurement: {"bench", "metric", "value", "unit", "device", "config"}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from logstore import ATTRIBUTES, RunWriter, list_runs, open_run, open_runs, population_curves  # noqa: E402
from logstore.schema import CHUNK_INDIVIDUALS, CHUNK_STEPS  # noqa: E402


@dataclass
class Scale:
    n_train: int = 64_000
    n_heldout: int = 16_000
    steps: int = 200
    layers: int = 8
    heads: int = 8
    subset: int = 4096  # individuals per split evaluated at every step (subset plan)
    n_full: int = 24  # evaluations of everyone (subset plan)
    n_runs: int = 100  # small runs for open_runs
    run_individuals: int = 1000
    run_steps: int = 20
    repeats: int = 7  # timed reads per measurement (the median is reported)


SMALL = Scale(n_train=4000, n_heldout=1000, steps=40, layers=2, heads=2, subset=512, n_full=6, n_runs=20, run_steps=10)


def device() -> str:
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def load() -> float:
    """The 1-minute load average: other work on the machine slows every figure down."""
    return round(os.getloadavg()[0], 2)


class Synthetic:
    """A population learning its facts: per-fact sigmoid loss curves with noise, float32.

    Individuals are in the store's order: the dense subsets of train and heldout first.
    A pool of precomputed evaluation rows is cycled so that generating data costs the
    benchmark almost nothing next to the writer.
    """

    def __init__(self, scale: Scale, plan: str, seed: int = 0, pool: int = 8):
        rng = np.random.default_rng(seed)
        s = scale
        train, held = np.arange(s.n_train), np.arange(s.n_train, s.n_train + s.n_heldout)
        dense = min(s.subset, s.n_train), min(s.subset, s.n_heldout)
        order = np.concatenate([train[: dense[0]], held[: dense[1]], train[dense[0] :], held[dense[1] :]])
        self.n = len(order)
        self.individual = order
        self.split = np.where(order < s.n_train, "train", "heldout")
        self.rank = np.where(order < s.n_train, order, -1)
        self.baseline = np.log([200.0, 800.0, 200.0, 100.0, 500.0, 800.0])
        self.n_dense = sum(dense)
        self.full_rows = set(np.linspace(0, s.steps - 1, s.n_full).round().astype(int).tolist())
        self.plan, self.scale = plan, s
        acquired = rng.uniform(0, s.steps, (self.n, 6)).astype(np.float32)
        self.pool = []
        for k in range(pool):
            t = s.steps * (k + 0.5) / pool
            loss = (self.baseline / (1 + np.exp((t - acquired) / 8)) + rng.gamma(2.0, 0.05, (self.n, 6))).astype(np.float32)
            self.pool.append(
                dict(
                    loss=loss,
                    correct=loss < 0.5,
                    top_prob=np.exp(-loss).astype(np.float32),
                    entropy=(loss * rng.uniform(0.5, 1.5, loss.shape)).astype(np.float32),
                    exposures=rng.poisson(5 * (k + 1), self.n).astype(np.int32),
                )
            )
        self.sparse_loss = [p["loss"].copy() for p in self.pool]
        for loss in self.sparse_loss:
            loss[self.n_dense :] = np.nan
        attn = rng.uniform(0, 1, (s.layers, s.heads)).astype(np.float32)
        self.attention = dict(attn_name_to_name=attn, attn_value_to_name=attn * 0.5, attn_sharpness=attn * 2)

    def row(self, r: int) -> dict:
        k = r % len(self.pool)
        row = dict(self.pool[k])
        if self.plan == "subset" and r not in self.full_rows:
            row["loss"] = self.sparse_loss[k]
        return {**row, **self.attention}

    def evaluated_fact_steps(self) -> int:
        if self.plan == "full":
            return self.n * 6 * self.scale.steps
        full = len(self.full_rows)
        return 6 * (self.n * full + self.n_dense * (self.scale.steps - full))


def disk_bytes(path: Path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def write_run(path: Path, data: Synthetic, chunks: tuple[int, int], fsync: bool = True) -> dict:
    """Write a whole run; return the writer's seconds per evaluation and append latencies."""
    s = data.scale
    w = RunWriter.create(
        path,
        individual=data.individual,
        split=data.split,
        rank=data.rank,
        baseline=data.baseline,
        n_layers=s.layers,
        n_heads=s.heads,
        config={"bench": "store", "scale": asdict(s), "plan": data.plan},
        package_version="bench",
        chunk_steps=chunks[0],
        chunk_individuals=chunks[1],
        fsync=fsync,
    )
    latencies = []
    start = time.perf_counter()
    for r in range(s.steps):
        row = data.row(r)
        t0 = time.perf_counter()
        w.append_eval(100 * (r + 1), **row)
        w.append_train(np.arange(100 * r + 1, 100 * r + 101), np.full(100, 2.0, np.float32), np.full(100, 4e-4, np.float32))
        latencies.append(time.perf_counter() - t0)
    w.flush()
    elapsed = time.perf_counter() - start
    t0 = time.perf_counter()
    w.close()
    close_s = time.perf_counter() - t0
    return {"s_per_eval": elapsed / s.steps, "append_ms": 1e3 * statistics.median(latencies), "close_s": close_s}


def timed(fn, repeats: int, cpu: bool = False) -> float | tuple[float, float]:
    """Median wall seconds of ``fn(i)`` over ``repeats`` calls (and median CPU seconds of
    all this process's threads, if ``cpu``)."""
    times, cpus = [], []
    for i in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn(i)
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return (statistics.median(times), statistics.median(cpus)) if cpu else statistics.median(times)


def read_times(path: Path, scale: Scale, n: int, repeats: int, seed: int = 1, opener=open_run, cpu: bool = False) -> dict:
    """Open, one fact's curve, all facts at one step, the population curve (seconds).

    A curve or a step is read two ways: loss and correct (what a curve plot needs), and
    every per-fact variable (loss, correct, top_prob, entropy, exposures). ``opener``:
    open_run or another reader of the same Dataset; ``cpu``: (wall, CPU) pairs.
    """
    rng = np.random.default_rng(seed)
    facts = rng.integers(0, n, repeats)
    attrs = rng.integers(0, 6, repeats)
    steps = rng.integers(0, scale.steps, repeats)
    ds = opener(path)
    curve, every = ["loss", "correct"], ["loss", "correct", "top_prob", "entropy", "exposures"]
    timed_ = lambda fn, k: timed(fn, k, cpu)  # noqa: E731
    return {
        "open_s": timed_(lambda i: opener(path).attrs["committed_steps"], repeats),
        "curve_s": timed_(lambda i: ds[curve].isel(individual=facts[i], attribute=attrs[i]).load(), repeats),
        "curve_all_s": timed_(lambda i: ds[every].isel(individual=facts[i], attribute=attrs[i]).load(), repeats),
        "step_s": timed_(lambda i: ds[curve].isel(step=steps[i]).load(), repeats),
        "step_all_s": timed_(lambda i: ds[every].isel(step=steps[i]).load(), repeats),
        "population_s": timed_(lambda i: population_curves(ds), max(1, repeats // 3)),
    }


def many_runs(top: Path, scale: Scale) -> dict:
    """open_runs and list_runs over scale.n_runs small complete runs (seconds)."""
    n = scale.run_individuals
    small = Scale(n_train=n * 4 // 5, n_heldout=n // 5, steps=scale.run_steps, layers=2, heads=2, subset=0)
    data = Synthetic(small, "full", pool=2)
    for k in range(scale.n_runs):
        w = RunWriter.create(
            top / f"run{k:03d}" / "metrics.zarr",
            individual=data.individual,
            split=data.split,
            rank=data.rank,
            baseline=data.baseline,
            n_layers=2,
            n_heads=2,
            config={"seed": k % 5, "world": {"n_individuals": small.n_train}, "sampling": {"kind": "power_law", "alpha": 0.1 * (k // 5)}},
            package_version="bench",
            fsync=False,
        )
        for r in range(small.steps):
            w.append_eval(10 * (r + 1), **data.row(r))
        w.close()
    tree_s = timed(lambda i: open_runs(top), 3)
    table_s = timed(lambda i: list_runs(top), 3)
    assert len(open_runs(top).children) == scale.n_runs
    return {"open_runs_s": tree_s, "list_runs_s": table_s}


class Report:
    def __init__(self, config: dict):
        self.rows, self.config, self.device = [], config, device()

    def add(self, metric: str, value: float, unit: str, target: str = "", **config) -> None:
        config = {**self.config, **config, "load_average": load()}
        self.rows.append((metric, value, unit, target, config))

    def print(self) -> None:
        print(f"\nlogstore benchmark on {self.device} (load average at the end: {load()})")
        print(f"{'metric':<34} {'value':>12}  {'unit':<10} target")
        for metric, value, unit, target, _ in self.rows:
            print(f"{metric:<34} {value:>12.4g}  {unit:<10} {target}")
        print()
        for metric, value, unit, _, config in self.rows:
            line = {"bench": "store", "metric": metric, "value": round(value, 6), "unit": unit, "device": self.device, "config": config}
            print(json.dumps(line))


def main_bench(scale: Scale, top: Path, chunks: tuple[int, int], report: Report) -> None:
    for plan in ("full", "subset"):
        data = Synthetic(scale, plan)
        path = top / plan / "metrics.zarr"
        w = write_run(path, data, chunks)
        size = disk_bytes(path)
        fact_steps = data.n * 6 * scale.steps
        report.add(f"write_{plan}_s_per_eval", w["s_per_eval"], "s", "< 1 (keeps up with 1 eval/s)", plan=plan)
        report.add(f"write_{plan}_evals_per_s", 1 / w["s_per_eval"], "evals/s", "", plan=plan)
        report.add(f"append_{plan}_latency", w["append_ms"], "ms", "(trainer's wait per eval)", plan=plan)
        report.add(f"close_{plan}", w["close_s"], "s", "", plan=plan)
        report.add(f"bytes_{plan}_per_fact_step", size / fact_steps, "B", "(all variables, / every fact-step)", plan=plan)
        report.add(f"bytes_{plan}_per_evaluated_fact_step", size / data.evaluated_fact_steps(), "B", "", plan=plan)
        report.add(f"disk_{plan}", size / 1e6, "MB", "", plan=plan)
        if plan == "full":
            r = read_times(path, scale, data.n, scale.repeats)
            report.add("open_run", 1e3 * r["open_s"], "ms", "", plan=plan)
            report.add("curve_one_fact", 1e3 * r["curve_s"], "ms", "< 100 (loss, correct)", plan=plan)
            report.add("curve_one_fact_all_variables", 1e3 * r["curve_all_s"], "ms", "< 100", plan=plan)
            report.add("step_all_facts", r["step_s"], "s", "< 0.5 (loss, correct)", plan=plan)
            report.add("step_all_facts_all_variables", r["step_all_s"], "s", "< 0.5", plan=plan)
            report.add("population_curve", r["population_s"], "s", "< 5", plan=plan)
        else:
            report.add("population_curve_subset_plan", read_times(path, scale, data.n, 1)["population_s"], "s", "< 5", plan=plan)
        shutil.rmtree(path)
    r = many_runs(top / "runs", scale)
    report.add(f"open_runs_{scale.n_runs}", r["open_runs_s"], "s", "< 2 (100 runs)")
    report.add(f"list_runs_{scale.n_runs}", r["list_runs_s"], "s", "")


def layout_sweep(scale: Scale, top: Path, report: Report) -> None:
    """Write and read the full plan with each candidate chunk layout (steps x individuals)."""
    candidates = [(1, 4096), (4, 2048), (4, 4096), (8, 2048), (8, 4096), (16, 4096), (8, 8192)]
    data = Synthetic(scale, "full")
    for s, i in candidates:
        path = top / f"layout_{s}x{i}" / "metrics.zarr"
        w = write_run(path, data, (s, i))
        r = read_times(path, scale, data.n, 5)
        tag, config = f"{s}x{i}", {"chunks": [s, i, 6]}
        files = sum(len(f) for _, _, f in os.walk(path))
        report.add(f"layout_{tag}_write", w["s_per_eval"], "s/eval", "", **config)
        report.add(f"layout_{tag}_curve", 1e3 * r["curve_s"], "ms", "", **config)
        report.add(f"layout_{tag}_curve_all", 1e3 * r["curve_all_s"], "ms", "", **config)
        report.add(f"layout_{tag}_step", r["step_s"], "s", "", **config)
        report.add(f"layout_{tag}_step_all", r["step_all_s"], "s", "", **config)
        report.add(f"layout_{tag}_population", r["population_s"], "s", "", **config)
        report.add(f"layout_{tag}_bytes_per_fact_step", disk_bytes(path) / (data.n * 6 * scale.steps), "B", "", **config)
        report.add(f"layout_{tag}_files", files, "files", "", **config)
        shutil.rmtree(path.parent)
        print(f"layout {tag} done", file=sys.stderr, flush=True)


def codec_sweep(scale: Scale, top: Path, report: Report) -> None:
    """Bytes and read time of candidate codecs for the loss array (32 steps, chunks 8 x 4096).

    Read time: CPU seconds to read one step of every individual, through zarr, and for the
    codecs logstore writes also through logstore's own chunk reader (logstore/chunks.py).
    """
    import zarr
    from zarr.codecs import BloscCodec, Crc32cCodec

    from logstore.chunks import ArrayReader

    data, steps = Synthetic(scale, "full"), 32
    candidates = {
        "blosc-zstd1-shuffle": BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"),
        "blosc-zstd1-bitshuffle": BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle"),
        "blosc-lz4-shuffle": BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
        "blosc-lz4-bitshuffle": BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"),
        "none": None,
    }
    for label, codec in candidates.items():
        path = top / f"codec_{label}.zarr"
        compressors = (codec, Crc32cCodec()) if codec else (Crc32cCodec(),)
        array = zarr.create_array(
            path, shape=(steps, data.n, 6), chunks=(8, 4096, 6), dtype="f4", fill_value=np.nan, compressors=compressors,
            chunk_key_encoding={"name": "default", "separator": "."},
        )
        for block in range(steps // 8):
            array[8 * block : 8 * block + 8] = np.stack([data.row(8 * block + k)["loss"] for k in range(8)])
        config = {"codec": label, "chunks": [8, 4096, 6], "steps": steps}
        report.add(f"codec_{label}_bytes_per_value", disk_bytes(path) / (steps * data.n * 6), "B", "", **config)
        report.add(f"codec_{label}_step_read_zarr_cpu", 1e3 * cpu_time(lambda i: array[3 + 4 * i], 5), "ms", "", **config)
        reader = ArrayReader(path.parent, path.name, json.loads((path / "zarr.json").read_text()))
        report.add(f"codec_{label}_step_read_direct_cpu", 1e3 * cpu_time(lambda i: reader.read((3 + 4 * i,)), 5), "ms", "", **config)
        shutil.rmtree(path)


class ZarrReader:
    """ArrayReader's interface over zarr-python's own array (the --decoders candidate)."""

    def __init__(self, root: Path, name: str, meta: dict):
        self.root, self.name, self.meta = root, name, meta
        self.dtype = np.dtype(object) if meta["data_type"] == "string" else np.dtype(meta["data_type"])
        self._array = None

    @property
    def array(self):
        import zarr
        from zarr.storage import LocalStore, StorePath

        if self._array is None:  # built from the metadata already read and checked: no second read
            store = StorePath(LocalStore(self.root, read_only=True), self.name)
            self._array = zarr.Array(zarr.AsyncArray(metadata=self.meta, store_path=store))
        return self._array

    def read(self, key: tuple) -> np.ndarray:
        from logstore.schema import StoreError

        try:
            values = self.array[key]
            return values.astype(object) if values.dtype.kind == "T" else values  # numpy's StringDType
        except Exception as err:
            raise StoreError(f"{self.root}: array '{self.name}': cannot read a chunk ({type(err).__name__}: {err})") from err


def open_run_zarr(path: Path):
    """open_run with zarr-python reading every chunk (the same Dataset, the same semantics)."""
    from logstore import reader

    return reader._dataset(*reader._prepare(path), reader=ZarrReader)


def open_run_from_zarr(path: Path):
    """The plainest reader over zarr: dask.array.from_zarr per variable, committed rows by
    slicing, correct masked with da.where (slices then stop at the dask chunks, not the store's)."""
    import dask.array as da

    from logstore import reader
    from logstore.schema import DATA_VARIABLES

    root, attrs, metas, rows = reader._prepare(path)
    ds = reader._dataset(root, attrs, metas, rows, reader=ZarrReader)
    arrays = {}
    for name, var in DATA_VARIABLES.items():
        lazy = da.from_zarr(ZarrReader(root, name, metas[name]).array, chunks=reader._dask_chunks(metas[name]), inline_array=True)
        arrays[name] = lazy[: rows[var.dims[0]]] if var.dims[0] in rows else lazy
    arrays["correct"] = da.where(da.isnan(arrays["loss"]), np.float32(np.nan), arrays["correct"].astype(np.float32))
    return ds.assign({name: (ds[name].dims, a, ds[name].attrs) for name, a in arrays.items()})


def decoder_comparison(scale: Scale, top: Path, report: Report, rounds: int = 3) -> None:
    """The same store read by open_run (logstore/chunks.py decodes) and through zarr-python.

    Every read of read_times, by each reader in turn, ``rounds`` times over (so that other
    work on the machine slows all of them alike); wall and CPU medians over all rounds.
    """
    data = Synthetic(scale, "full")
    path = top / "decoders" / "metrics.zarr"
    write_run(path, data, (CHUNK_STEPS, CHUNK_INDIVIDUALS), fsync=False)
    openers = {"logstore": open_run, "zarr": open_run_zarr, "zarr_from_zarr": open_run_from_zarr}
    first = {label: opener(path) for label, opener in openers.items()}  # the same values, every way
    for label, ds in first.items():
        for sel in (dict(individual=data.n // 3, attribute=3), dict(step=scale.steps // 2)):
            for name in ("loss", "correct", "exposures"):
                pick = {dim: k for dim, k in sel.items() if dim in ds[name].dims}
                np.testing.assert_array_equal(ds[name].isel(pick).values, first["logstore"][name].isel(pick).values, err_msg=label)
    times: dict = {label: {} for label in openers}
    for r in range(rounds):
        for label, opener in openers.items():
            for metric, (wall, cpu) in read_times(path, scale, data.n, scale.repeats, seed=r, opener=opener, cpu=True).items():
                times[label].setdefault(metric, []).append((wall, cpu))
            print(f"decoders: round {r + 1}, {label} done", file=sys.stderr, flush=True)
    for label, metrics in times.items():
        for metric, values in metrics.items():
            name = metric.removesuffix("_s")
            wall = statistics.median(w for w, _ in values)
            cpu = statistics.median(c for _, c in values)
            report.add(f"decoders_{label}_{name}", 1e3 * wall, "ms", "", reader=label, rounds=rounds)
            report.add(f"decoders_{label}_{name}_cpu", 1e3 * cpu, "ms", "", reader=label, rounds=rounds)
    shutil.rmtree(path.parent)


def cpu_time(fn, repeats: int) -> float:
    """Median CPU seconds (all threads of this process) of ``fn(i)`` over ``repeats`` calls."""
    times = []
    for i in range(repeats):
        t0 = time.process_time()
        fn(i)
        times.append(time.process_time() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="a small, quick configuration")
    parser.add_argument("--layouts", action="store_true", help="sweep candidate chunk layouts instead")
    parser.add_argument("--codecs", action="store_true", help="sweep candidate codecs for loss instead")
    parser.add_argument("--decoders", action="store_true", help="compare open_run's chunk reader with zarr-python's own instead")
    parser.add_argument("--dir", help="scratch folder (default: a temporary one, removed after)")
    parser.add_argument("--chunks", default=f"{CHUNK_STEPS}x{CHUNK_INDIVIDUALS}", help="steps x individuals per chunk (8x4096)")
    args = parser.parse_args(argv)
    scale = SMALL if args.small else Scale()
    chunks = tuple(int(v) for v in args.chunks.split("x"))
    top = Path(args.dir or tempfile.mkdtemp(prefix="bench_store_"))
    top.mkdir(parents=True, exist_ok=True)
    individuals = scale.n_train + scale.n_heldout
    config = {"individuals": individuals, "attributes": len(ATTRIBUTES), "steps": scale.steps, "chunks": [*chunks, 6], "small": args.small}
    report = Report(config)
    try:
        if args.layouts:
            layout_sweep(scale, top, report)
        elif args.codecs:
            codec_sweep(scale, top, report)
        elif args.decoders:
            decoder_comparison(scale, top, report)
        else:
            main_bench(scale, top, chunks, report)
    finally:
        if not args.dir:
            shutil.rmtree(top, ignore_errors=True)
    report.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
