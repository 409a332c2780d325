"""Where the runs of a sweep execute: a local pool of processes, or an existing Dask cluster.

Both pools hand each run to ``trainer.sweep_run.execute_run``, which trains it in a process
of its own; they differ only in where that happens and how many at once:

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

import json
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from trainer.config import ConfigError
from trainer.sweep_run import execute_run


def progress_steps(path: Path) -> int:
    """Training steps a run has committed so far (0 when it has no store yet)."""
    try:
        doc = json.loads((path / "metrics.zarr" / "zarr.json").read_bytes())
        return int(doc["attributes"].get("committed_train_steps", 0))
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _outcome(name: str, result: dict):
    from trainer.sweep import Outcome

    return Outcome(name, **result)


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
        from trainer.run import resolve_device

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

    def _run(self, path: str) -> dict:
        if self._stop.is_set():
            return {"status": "interrupted", "message": "not started"}
        with self._lock:
            env = self._free.pop()
        try:
            return execute_run(path, self.device, env, self._stop.is_set, where=f"local {self.device}")
        finally:
            with self._lock:
                self._free.append(env)

    def submit(self, run):
        return self._executor.submit(self._run, str(run.path))

    def outcome(self, future, run):
        try:
            return _outcome(run.name, future.result())
        except Exception as err:  # an error in this process, not in the run's
            return _outcome(run.name, {"status": "failed", "message": f"{type(err).__name__}: {err}"})

    def stop(self) -> None:
        """Ask every running run to save its resume state and stop (SIGINT)."""
        self._stop.set()

    def close(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=True)


def dask_task(path: str, device: str, stop_event: str) -> dict:
    """One run as a Dask task: train it in a process of its own on this worker."""
    import time

    from distributed import Event, get_worker

    worker = get_worker()
    event = Event(stop_event)
    if event.is_set():  # the sweep was interrupted before this task started
        return {"status": "interrupted", "message": "not started", "where": f"dask worker {worker.address}"}
    checked = [0.0]

    def should_stop() -> bool:
        if time.monotonic() - checked[0] < 2.0:
            return False
        checked[0] = time.monotonic()
        try:
            return event.is_set()
        except Exception:  # the client went away: keep training, the run stays resumable
            return False

    return execute_run(path, device, None, should_stop, where=f"dask worker {worker.address}")


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

    def submit(self, run):
        return self.client.submit(dask_task, str(run.path.resolve()), self.device, f"phasefit-stop-{self.tag}",
                                  key=f"phasefit-run-{run.name}-{self.tag}", resources=self.resources, pure=False)

    def outcome(self, future, run):
        try:
            return _outcome(run.name, future.result())
        except Exception as err:  # the task itself failed: a worker lost too often, a cancellation
            return _outcome(run.name, {"status": "failed", "message": f"on the cluster: {type(err).__name__}: {err}"})

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
