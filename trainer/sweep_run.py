"""One run of a sweep, in a process of its own: ``python -m trainer.sweep_run RUN_DIR``.

The run folder already holds its resolved config.toml. The process looks at what the folder
holds and does the one right thing: nothing if the run is complete, resume it if it has a
resume state, start it over if it has a store but no resume state, start it otherwise.
Deciding here, not when the sweep is planned, keeps a task that a Dask cluster reschedules
(a worker lost mid-run) correct.

``execute_run`` launches that process, forwards a stop request to it as SIGINT (the
trainer then saves its resume state between steps), waits, and reads the outcome from the
store. The local pool and the Dask tasks both call it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path

LOG = "sweep.log"  # beside config.toml: the output of every attempt at the run


def _store_attrs(path: Path) -> dict | str:
    """The run's store attributes, or why they cannot be read."""
    from logstore.checks import check_store
    from logstore import StoreError

    try:
        return check_store(path / "metrics.zarr")[1]
    except StoreError as err:
        return str(err)


def _locked(path: Path) -> bool:
    """True when another process holds the store's writer lock (it is training this run now)."""
    import fcntl

    lock = path / "metrics.zarr.lock"
    if not lock.exists():
        return False
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the lock if we took it
    return False


def store_state(path: Path) -> tuple[str, str]:
    """("new" | "partial" | "complete" | "busy" | "conflict", why) for a run folder. A store
    that cannot be read is a conflict: it may be a finished run, damaged, and is never deleted."""
    if not (path / "metrics.zarr").exists():
        return "new", ""
    if _locked(path):
        return "busy", f"{path}: another process is training this run now"
    attrs = _store_attrs(path)
    if isinstance(attrs, str):
        return "conflict", f"{attrs}; move the run away (or delete it) to train it again"
    if attrs.get("status") == "complete":
        return "complete", ""
    if (path / "checkpoints" / "resume.safetensors").exists():
        return "partial", "resume"
    return "partial", "restart"


def train_run(path: Path, device: str) -> int:
    """Bring the run in ``path`` to completion (the body of the run's process). Returns an exit code."""
    import torch

    from trainer.config import ConfigError, from_dict, read_toml
    from trainer.loop import Diverged, train
    from trainer.references import check_references
    from trainer.run import resolve_device

    state, how = store_state(path)
    if state == "complete":
        print(f"{path}: already complete")
        return 0
    if state == "busy":
        print(f"phasefit: {how}")
        return 3
    if state == "conflict":
        print(f"phasefit: error: {how}")
        return 2
    try:
        config = from_dict(read_toml(path / "config.toml"), str(path / "config.toml"))
        check_references(config)
        dev = resolve_device(device)
    except ConfigError as err:
        print(f"phasefit: error: {err}")
        return 2
    resume = state == "partial" and how == "resume"
    if state == "partial" and not resume:
        # A store without a resume state (killed before its first one): start over.
        for stale in [path / "metrics.zarr", path / "checkpoints", *path.glob("metrics.zarr.creating-*")]:
            shutil.rmtree(stale, ignore_errors=True)
    print(f"{path}: {'resuming' if resume else 'starting'} on {dev} ({torch.get_num_threads()} CPU threads)", flush=True)
    try:
        summary = train(config, path, dev, resume=resume, progress=False)
    except Diverged as err:
        print(f"phasefit: {path}: failed: {err}")
        return 1
    except KeyboardInterrupt:
        print(f"phasefit: {path}: interrupted; its resume state is saved")
        return 130
    except torch.cuda.OutOfMemoryError:
        print(f"phasefit: {path}: failed: out of GPU memory at train.batch_size={config.train.batch_size}, "
              f"eval.batch_size={config.eval.batch_size}")
        return 1
    print(f"{path}: {summary.status}, {summary.steps} steps in {summary.wall_s:.1f} s, final train loss "
          f"{summary.final_loss:.3f}, accuracy {summary.final_accuracy:.3f}")
    return 0


def execute_run(path: str, device: str, env: dict | None = None, should_stop=None, where: str = "") -> dict:
    """Run ``python -m trainer.sweep_run PATH`` and wait. Returns {status, message, wall_s, where}.

    ``env`` is added to this process's environment (threads, visible GPU); ``should_stop``
    is polled, and when it turns true the run gets SIGINT and saves its resume state.
    """
    run = Path(path)
    where = where or socket.gethostname()
    cmd = [sys.executable, "-m", "trainer.sweep_run", str(run), "--device", device]
    start = time.perf_counter()
    with open(run / LOG, "a") as log:
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
    attrs = _store_attrs(run)
    attrs = attrs if isinstance(attrs, dict) else {}
    if code == 0 and attrs.get("status") == "complete":
        return {"status": "complete", "message": "", "wall_s": wall, "where": where}
    if stopped or code in (130, -signal.SIGINT):
        return {"status": "interrupted", "message": "its resume state is saved", "wall_s": wall, "where": where}
    message = attrs.get("reason") if attrs.get("status") == "failed" else None
    return {"status": "failed", "message": message or _last_line(run / LOG) or f"exit code {code}",
            "wall_s": wall, "where": where}


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].removeprefix("phasefit: ") if lines else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.sweep_run", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    # A scheduler stops a task with SIGTERM (Slurm preemption, a cancelled job): save the
    # resume state as for Ctrl-C, which the trainer honours between steps.
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        code = train_run(Path(args.run_dir), args.device)
    except Exception as err:  # the traceback in the log, its last line for the sweep's report
        traceback.print_exc(file=sys.stdout)
        print(f"phasefit: {args.run_dir}: failed: {type(err).__name__}: {err}")
        code = 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a late second Ctrl-C must not garble the exit
    return code


if __name__ == "__main__":
    sys.exit(main())
