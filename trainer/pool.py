"""Running a sweep's runs: on a local pool of processes, or on an existing Dask cluster.

Every run trains in a process of its own (``execute_run``: ``python -m trainer.run RUN_DIR``),
which decides from the run folder what to do (trainer/run.py); runs that can share a training
step go to one process as a pack (``pack_runs``, trainer/pack.py), which trains them as one
stacked model. The pools differ only in where that happens and how many at once (a pack counts
as one):

- ``LocalPool``: on the CPU, ``workers`` runs at once with ``cores // workers`` threads each
  (unless OMP_NUM_THREADS is set). On GPUs, ``runs_per_gpu`` runs per device at once (at
  least ``workers`` in all), each run's process seeing only its GPU (CUDA_VISIBLE_DEVICES).
- ``DaskPool``: each run is one task on the cluster at ``scheduler``. When workers declare a
  GPU resource (``dask worker ... --resources GPU=1``, or dask-jobqueue's
  ``worker_extra_args``), each task asks for ``GPU = 1 / runs_per_gpu``, so the cluster runs
  that many at once per GPU; otherwise tasks go to any worker thread. The runs folder must be
  on a filesystem every worker sees.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from logstore import STORE_NAME, StoreError, check_store, committed_train_steps
from trainer.config import ConfigError
from trainer.pack import pack_key
from trainer.run import resolve_device, run_state, stop_on_sigterm, write_config
from trainer.sweep import RunSpec, Sweep, load_sweep

LOG = "sweep.log"  # beside config.toml: the output of every attempt at the run


@dataclass
class Outcome:
    """How one run of a sweep ended: complete, failed, interrupted, or skipped (with why)."""

    name: str
    status: str
    message: str = ""
    wall_s: float = 0.0
    where: str = ""  # the machine or Dask worker that ran it
    skipped: bool = False  # complete before this sweep started


def execute_run(paths: list[str], device: str, env: dict | None = None, should_stop=None, where: str = "") -> list[dict]:
    """Run ``python -m trainer.run PATH...`` (several paths: a pack) and wait. Returns one
    {status, message, wall_s, where} per path.

    ``env`` is added to this process's environment (threads, visible GPU); ``should_stop``
    is polled, and when it turns true the process gets SIGINT and saves every resume state.
    The output goes to the first run's sweep.log, and is copied to the other runs' at the end.
    """
    runs = [Path(p) for p in paths]
    where = where or socket.gethostname()
    cmd = [sys.executable, "-m", "trainer.run", *map(str, runs), "--device", device]
    start = time.perf_counter()
    with open(runs[0] / LOG, "a") as log:
        begin = log.tell()
        log.write(f"== {datetime.now().isoformat(timespec='seconds')} on {where}: {' '.join(cmd)}"
                  f"{'' if not env else ' with ' + ' '.join(f'{k}={v}' for k, v in env.items())}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"})
        stopped = False
        while True:
            try:
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                pass
            if not stopped and should_stop is not None and should_stop():
                proc.send_signal(signal.SIGINT)
                stopped = True
    wall = time.perf_counter() - start
    if len(runs) > 1:
        with open(runs[0] / LOG, "rb") as log:
            log.seek(begin)
            output = log.read()
        for run in runs[1:]:
            with open(run / LOG, "ab") as other:
                other.write(output)
    return [run_outcome(run, code, stopped, wall, where) for run in runs]


def run_outcome(run: Path, code: int, stopped: bool, wall: float, where: str) -> dict:
    """How the run in ``run`` ended, from its store, and its process's exit ``code``."""
    try:
        attrs = check_store(run / STORE_NAME)[1]
    except StoreError:
        attrs = {}
    if attrs.get("status") == "complete":  # a pack's process exits 1 when any member failed
        return {"status": "complete", "message": "", "wall_s": wall, "where": where}
    if stopped or code in (130, -signal.SIGINT):
        return {"status": "interrupted", "message": "its resume state is saved", "wall_s": wall, "where": where}
    message = attrs.get("reason") if attrs.get("status") == "failed" else None
    return {"status": "failed", "message": message or _last_line(run / LOG) or f"exit code {code}",
            "wall_s": wall, "where": where}


def pack_runs(runs: list[RunSpec], size: int) -> list[list[RunSpec]]:
    """``runs`` in packs of at most ``size`` that can share a training step (trainer/pack.py), in
    order of their first run; a run that can share with none (a patched run) alone."""
    groups: dict[tuple, list[RunSpec]] = {}
    for run in runs:
        groups.setdefault(pack_key(run.config) or (run.name,), []).append(run)
    packs = [group[i : i + size] for group in groups.values() for i in range(0, len(group), size)]
    return sorted(packs, key=lambda pack: runs.index(pack[0]))  # the sweep's order, as runs alone go


def default_pack(device: str) -> int:
    """Runs per pack when neither the sweep file nor --pack says: see docs/trainer.md, "Packs"."""
    return 1 if device == "cpu" else 8


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].removeprefix("phasefit: ") if lines else ""


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries."""
    import torch

    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [g.strip() for g in listed.split(",") if g.strip()][: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def local_slots(workers: int, device: str, runs_per_gpu: int) -> tuple[str, list[dict]]:
    """(device each run gets, one environment per concurrent run) for the local pool."""
    if device != "cpu":
        dev = resolve_device(device)  # ConfigError for a bad name or CUDA where there is none
        if dev.type == "cuda":
            gpus = visible_gpus()
            if dev.index is not None:
                if dev.index >= len(gpus):
                    raise ConfigError(f"--device {device}: only {len(gpus)} GPUs are visible")
                gpus = [gpus[dev.index]]
            slots = max(workers, len(gpus) * runs_per_gpu)
            return "cuda", [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} for i in range(slots)]
    if "OMP_NUM_THREADS" in os.environ:
        return "cpu", [{} for _ in range(workers)]
    threads = max(1, (os.cpu_count() or 1) // workers)
    return "cpu", [{"OMP_NUM_THREADS": str(threads)} for _ in range(workers)]


class LocalPool:
    """Runs on this machine, each in its own process, at most one per slot at a time."""

    def __init__(self, device: str, slots: list[dict]):
        self.device = device
        self._free: list[dict] = list(slots)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._executor = ThreadPoolExecutor(len(slots), thread_name_prefix="phasefit-run")

    def _run(self, paths: list[str]) -> list[dict]:
        if self._stop.is_set():
            return [{"status": "interrupted", "message": "not started"}] * len(paths)
        with self._lock:
            env = self._free.pop()
        try:
            return execute_run(paths, self.device, env, self._stop.is_set, where=f"local {self.device}")
        finally:
            with self._lock:
                self._free.append(env)

    def submit(self, pack: list[RunSpec]):
        return self._executor.submit(self._run, [str(run.path) for run in pack])

    def outcome(self, future, pack: list[RunSpec]) -> list[Outcome]:
        try:
            return [Outcome(run.name, **o) for run, o in zip(pack, future.result())]
        except Exception as err:  # an error in this process, not in the runs'
            return [Outcome(run.name, "failed", f"{type(err).__name__}: {err}") for run in pack]

    def stop(self) -> None:
        """Ask every running run to save its resume state and stop (SIGINT)."""
        self._stop.set()

    def close(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=True)


def dask_task(paths: list[str], device: str, stop_event: str) -> list[dict]:
    """One run (or pack) as a Dask task: train it in a process of its own on this worker."""
    from distributed import Event, get_worker

    worker = get_worker()
    event = Event(stop_event)
    if event.is_set():  # the sweep was interrupted before this task started
        return [{"status": "interrupted", "message": "not started", "where": f"dask worker {worker.address}"}] * len(paths)
    checked = [0.0]

    def should_stop() -> bool:
        if time.monotonic() - checked[0] < 2.0:
            return False
        checked[0] = time.monotonic()
        try:
            return event.is_set()
        except Exception:  # the client went away: keep training, the run stays resumable
            return False

    return execute_run(paths, device, None, should_stop, where=f"dask worker {worker.address}")


class DaskPool:
    """Runs as tasks on an existing Dask cluster (dask.distributed, dask-jobqueue)."""

    def __init__(self, address: str, device: str, runs_per_gpu: int, echo=print):
        try:
            from distributed import Client
        except ImportError:
            raise ConfigError("--scheduler needs the 'distributed' package (pip install distributed)") from None
        try:
            self.client = Client(address, timeout="20s")
        except (OSError, TimeoutError, ValueError) as err:
            raise ConfigError(f"--scheduler {address}: cannot connect ({err})") from None
        self.device = device
        self.tag = uuid.uuid4().hex[:8]
        workers = self.client.scheduler_info(n_workers=-1)["workers"]
        with_gpu = [w for w in workers.values() if (w.get("resources") or {}).get("GPU")]
        if with_gpu:
            self.resources = {"GPU": 1 / runs_per_gpu}
            echo(f"dask: {len(workers)} workers at {address}, {len(with_gpu)} with a GPU resource; "
                 f"each run asks for GPU={1 / runs_per_gpu:g}")
        else:
            self.resources = None
            echo(f"dask: {len(workers)} workers at {address}, none declares a GPU resource "
                 "(dask worker --resources GPU=1); runs go to any worker thread")

    def submit(self, pack: list[RunSpec]):
        name = pack[0].name + (f"-and-{len(pack) - 1}" if len(pack) > 1 else "")
        return self.client.submit(dask_task, [str(run.path.resolve()) for run in pack], self.device,
                                  f"phasefit-stop-{self.tag}", key=f"phasefit-run-{name}-{self.tag}",
                                  resources=self.resources, pure=False)

    def outcome(self, future, pack: list[RunSpec]) -> list[Outcome]:
        try:
            return [Outcome(run.name, **o) for run, o in zip(pack, future.result())]
        except Exception as err:  # the task itself failed: a worker lost too often, a cancellation
            return [Outcome(run.name, "failed", f"on the cluster: {type(err).__name__}: {err}") for run in pack]

    def stop(self) -> None:
        from distributed import Event

        Event(f"phasefit-stop-{self.tag}", client=self.client).set()

    def close(self, wait: bool = True) -> None:
        self.client.close()


def open_pool(sweep, *, workers: int, scheduler: str | None, device: str, echo=print):
    if scheduler:
        return DaskPool(scheduler, device, sweep.runs_per_gpu, echo)
    dev, slots = local_slots(workers, device, sweep.runs_per_gpu)
    return LocalPool(dev, slots)


def run_sweep(sweep: Sweep, *, workers: int = 1, scheduler: str | None = None, device: str = "auto",
              progress: bool | None = None, echo=print, pack: int | None = None) -> list[Outcome]:
    """Run every run of the sweep that is not complete; return one Outcome per run, in order.

    Locally: ``workers`` processes on the CPU, or on GPUs ``runs_per_gpu`` runs per device (at
    least ``workers`` in all). With ``scheduler``: each run is a task on that Dask cluster.
    Runs that can share a step train as packs of at most ``pack`` (else the sweep's ``pack``,
    else ``default_pack`` of the device), a pack in one process (or task) as one run would.
    A failed run is reported and does not stop the others. Ctrl-C asks every running run to
    save its resume state and stop; the same sweep run again continues where it stopped.
    """
    from tqdm.auto import tqdm

    outcomes: dict[str, Outcome] = {}
    todo: list[RunSpec] = []
    for run in sweep.runs:
        state, why = run_state(run.path, run.config)
        if state == "complete":
            outcomes[run.name] = Outcome(run.name, "complete", "already complete", skipped=True)
        elif state in ("conflict", "busy", "damaged"):
            outcomes[run.name] = Outcome(run.name, "failed", why)
        else:
            todo.append(run)
    blocked = sum(1 for o in outcomes.values() if o.status == "failed")
    echo(f"sweep {sweep.name}: {len(sweep.runs)} runs in {sweep.folder}; {len(outcomes) - blocked} already complete, "
         + (f"{blocked} blocked, " if blocked else "") + f"{len(todo)} to run")
    for o in outcomes.values():
        if o.status == "failed":
            echo(f"  {o.name}: not run: {o.message}")
    if not todo:
        return [outcomes[r.name] for r in sweep.runs]

    # The pool first: a bad --device or an unreachable --scheduler writes no run folder.
    pool = open_pool(sweep, workers=workers, scheduler=scheduler, device=device, echo=echo)
    size = pack or sweep.pack or default_pack(pool.device)
    try:
        for run in todo:
            write_config(run.config, run.path)  # the same file ``phasefit train`` writes
    except BaseException:
        pool.close(wait=False)
        raise
    total = sum(r.config.train.steps for r in todo)
    bar = tqdm(total=total, disable=None if progress is None else not progress, unit="step",
               desc=f"sweep {sweep.name}", dynamic_ncols=True)
    waiting, active = list(todo), {}
    steps_of = {r.name: 0 for r in todo}
    abandoned = False
    last_poll = 0.0

    def finish(run: RunSpec, outcome: Outcome) -> None:
        outcomes[run.name] = outcome
        steps_of[run.name] = run.config.train.steps
        line = f"  {outcome.status:<11} {run.name}"
        if outcome.wall_s:
            line += f" ({outcome.wall_s:.0f} s)"
        if outcome.status != "complete" and outcome.message:
            line += f": {outcome.message}"
        if bar.disable:
            echo(line)
        else:
            bar.write(line)

    try:
        while waiting or active:
            ready = []
            for run in list(waiting):
                deps = [outcomes.get(d) for d in run.needs]
                if any(d is not None and d.status != "complete" for d in deps):
                    bad = next(n for n, d in zip(run.needs, deps) if d is not None and d.status != "complete")
                    waiting.remove(run)
                    finish(run, Outcome(run.name, "failed", f"needs run {bad}, which did not complete"))
                elif all(d is not None for d in deps):
                    waiting.remove(run)
                    ready.append(run)
            for group in pack_runs(ready, size):
                active[pool.submit(group)] = group
            for future in [f for f in active if f.done()]:
                group = active.pop(future)
                for run, outcome in zip(group, pool.outcome(future, group)):
                    finish(run, outcome)
            now = time.monotonic()
            if now - last_poll > 2.0 or not active:
                for run in (run for group in active.values() for run in group):
                    steps_of[run.name] = committed_train_steps(run.path)
                last_poll = now
                bar.n = min(total, sum(steps_of.values()))
                done = sum(1 for r in todo if r.name in outcomes)
                failed = sum(1 for r in todo if r.name in outcomes and outcomes[r.name].status != "complete")
                bar.set_postfix_str(f"runs {done}/{len(todo)} done, {failed} failed, {len(active)} running")
            time.sleep(0.2)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (sweep_from_cli)
        # The runs training now (a local pool's queued runs are not; a Dask future cannot tell).
        n = sum(len(group) for f, group in active.items() if not hasattr(f, "running") or f.running())
        echo(f"sweep {sweep.name}: interrupted; waiting for {n} running run{'s' * (n != 1)} to save their state "
             "(Ctrl-C again to abandon them)")
        pool.stop()
        try:
            for future, group in list(active.items()):
                for run, outcome in zip(group, pool.outcome(future, group)):
                    finish(run, outcome)
        except KeyboardInterrupt:
            abandoned = True
    finally:
        bar.close()
        pool.close(wait=not abandoned)
    result = []
    for run in sweep.runs:
        result.append(outcomes.get(run.name) or Outcome(run.name, "interrupted", "not started"))
    return result


def summarise(sweep: Sweep, outcomes: list[Outcome]) -> str:
    counts = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    skipped = sum(1 for o in outcomes if o.skipped)
    parts = [f"{n} {status}" + (f" ({skipped} already)" if status == "complete" and skipped else "")
             for status, n in counts.items()]
    return f"sweep {sweep.name}: {len(outcomes)} runs: {', '.join(parts)}; runs in {sweep.folder}"


def check_options(out: str, workers: int, pack: int | None) -> None:
    """The command line's --out, --workers and --pack, before anything is read or written."""
    if workers < 1:
        raise ConfigError(f"--workers {workers}: must be at least 1")
    if pack is not None and pack < 1:
        raise ConfigError(f"--pack {pack}: must be at least 1 (1: every run alone)")
    blocking = next((p for p in [Path(out), *Path(out).parents] if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise ConfigError(f"--out {out}: {blocking} is a file, not a folder")


def sweep_from_cli(sweep_path: str, out: str | None = "runs", workers: int = 1, scheduler: str | None = None,
                   device: str = "auto", pack: int | None = None) -> int:
    """Entry point of ``phasefit sweep``: 0 when every run is complete, 1 when some failed,
    130 when interrupted by Ctrl-C or SIGTERM (run the same command again to continue)."""
    check_options(out or "runs", workers, pack)
    sweep = load_sweep(sweep_path, out or "runs")
    stop_on_sigterm()  # a scheduler's stop or a kill: the runs save their state, as on Ctrl-C
    outcomes = run_sweep(sweep, workers=workers, scheduler=scheduler, device=device, pack=pack)
    print(summarise(sweep, outcomes))
    if any(o.status == "interrupted" for o in outcomes):
        print(f"phasefit: sweep interrupted; continue with: phasefit sweep {sweep_path} --out {out or 'runs'}")
        return 130
    return 1 if any(o.status != "complete" for o in outcomes) else 0
