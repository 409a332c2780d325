"""A run folder: its state, preparing it, and training it to completion.

A run folder holds config.toml (the resolved config), the store (logstore.STORE_NAME) and
checkpoints/. ``phasefit train`` (``train_from_cli``) and a sweep's worker process
(``python -m trainer.run RUN_DIR... [--device D]``, ``main``; several folders train as packs)
both come here, so what a folder's state allows, and what a diverged, out-of-memory or
interrupted run means, is written once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import traceback
from pathlib import Path

import torch

from logstore import STORE_NAME, StoreError, check_store, json_attribute, verify_store, writer_busy
from logstore.durable import PARTIAL_SUFFIX
from trainer.checkpoints import RESUME, CheckpointError
from trainer.config import Config, ConfigError, from_dict, load_config, read_toml
from trainer.references import check_references, with_absolute_paths


def to_toml(config: Config) -> str:
    """The fully resolved config as TOML (flat sections of ints, floats, strings and bools)."""
    data = config.to_dict()
    lines = [f"{key} = {json.dumps(data.pop(key))}" for key in ("seed", "name")]
    for section, values in data.items():
        lines += ["", f"[{section}]"] + [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA where there is none is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name}: not a device (use cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available here (torch {torch.__version__}); use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name}: only cpu and cuda are supported")
    return device


def config_differences(a: Config, b: Config) -> list[str]:
    fa, fb = a.flat(), b.flat()
    return [f"{k}: {fa.get(k)!r} there, {fb.get(k)!r} here" for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def run_state(path: Path, config: Config | None = None) -> tuple[str, str]:
    """(state, why) of a run folder: new, partial, complete, busy, conflict or damaged.

    - new: no store yet.
    - partial: a store that is not complete; ``why`` is "resume" when a resume state is saved,
      "restart" when there is none (the run was killed before its first one).
    - complete.
    - busy: another process holds the store's writer lock (it is training the run now).
    - conflict (only when ``config`` is given): the folder's config.toml is not a valid
      config, or differs from ``config``.
    - damaged: the store cannot be read, or a partial one does not hold what its writer
      committed (``logstore.verify_store``). It may hold a finished run: never deleted.
    """
    saved = path / "config.toml"
    if config is not None and saved.exists():
        try:
            there = from_dict(read_toml(saved), str(saved))
        except ConfigError as err:
            return "conflict", f"its config.toml is not a valid config ({err})"
        diff = config_differences(there, config)
        if diff:
            return "conflict", (f"{path} holds a run with a different config ({'; '.join(diff[:3])}"
                                f"{'; ...' if len(diff) > 3 else ''}); delete it or use another --out")
    store = path / STORE_NAME
    if not store.exists():
        return "new", ""
    if writer_busy(store):
        return "busy", f"{path}: another process is training this run now"
    try:
        attrs = check_store(store)[1]
    except StoreError as err:
        return "damaged", f"{err}; move the run away (or delete it) to train it again"
    if attrs.get("status") == "complete":
        return "complete", ""
    try:  # a resume writes into it: it must hold exactly what was committed
        verify_store(store)
    except StoreError as err:
        return "damaged", f"{err}; move the run away (or delete it) to train it again"
    return "partial", "resume" if (path / "checkpoints" / RESUME).exists() else "restart"


def write_config(config: Config, out: Path) -> None:
    """``out/config.toml``, written whole or not at all, and never over another config: of two
    processes preparing one folder at once, the second finds the first's file and must agree
    with it (a sweep, and a later resume, read it back as the run's config)."""
    saved = out / "config.toml"
    tmp = out / f"config.toml.{os.getpid()}.tmp"
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp.write_text(to_toml(config))
    except OSError as err:  # a read-only folder, a full disk
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"--out {out}: cannot write the run's config.toml there ({err.strerror or err})") from None
    try:
        os.link(tmp, saved)  # atomic, and fails if the file exists
    except FileExistsError:
        there = from_dict(read_toml(saved), str(saved))
        if there != config:
            diff = config_differences(there, config)
            raise ConfigError(f"{out}: holds a run with a different config ({'; '.join(diff[:3])}"
                              f"{'; ...' if len(diff) > 3 else ''}); delete it or use another --out") from None
    finally:
        tmp.unlink(missing_ok=True)


def prepare_run(config: Config, out: Path) -> None:
    """Create the folder of a new run for ``phasefit train``; refuse a folder that is not one."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    if (out / STORE_NAME).exists():
        raise ConfigError(f"{out}: a run already exists there (use --resume to continue it, or another --out)")
    store = next((p for p in [out, *out.resolve().parents] if p.suffix == ".zarr" or (p / "zarr.json").exists()), None)
    if store is not None:
        raise ConfigError(f"--out {out}: inside the metrics store {store}; give the run a folder of its own")
    if out.is_dir():
        from logstore import find_runs  # reading runs needs xarray: only here

        held = list(find_runs(out))
        if held:
            raise ConfigError(f"--out {out}: a folder of {len(held)} runs ({held[0]}, ...); give the new run a "
                              f"folder of its own, e.g. --out {out / (config.name or 'run')}")
    check_references(config)
    write_config(config, out)


def check_writable(out: Path) -> None:
    """A resume or a restart writes into the run folder, its checkpoints/ and every folder of its
    store: one that cannot be written is refused before anything in it changes. Tried, not read
    from the mode bits, which do not stop root."""
    folders = [Path(d) for d, _, _ in os.walk(out / STORE_NAME)] + [out / "checkpoints", out]
    for folder in filter(Path.is_dir, folders):
        probe = folder / f".phasefit-write-test-{os.getpid()}{PARTIAL_SUFFIX}"  # removed with a killed writer's files
        try:
            probe.touch()
            probe.unlink()
        except OSError as err:
            raise ConfigError(f"{out}: cannot write to {folder} ({err.strerror or err}); make the run folder "
                              "writable (or copy it somewhere writable) first; nothing in it changed") from None


def check_resumable(config: Config, out: Path) -> None:
    """For ``phasefit train --resume``: ``out`` holds a partial run of ``config`` with a resume state."""
    state, why = run_state(out)
    if state == "complete":
        raise ConfigError(f"{out}: the run is already complete; nothing to resume")
    if state in ("busy", "damaged"):
        raise ConfigError(why)
    if not (out / "checkpoints" / RESUME).exists():
        raise ConfigError(f"{out}: nothing to resume (no checkpoints/{RESUME})")
    if state == "new":
        raise ConfigError(f"{out}: nothing to resume (no {STORE_NAME})")
    saved = out / "config.toml"
    if from_dict(read_toml(saved), str(saved)) != config:
        raise ConfigError(f"{out}: the run was started with a different config; resume it with its own: "
                          f"phasefit train {saved} --out {out} --resume")
    check_recorded_config(config, out)
    check_writable(out)


def check_recorded_config(config: Config, out: Path) -> None:
    """The config a resume would train with must be the one the store recorded when the run
    started: config.toml may have been edited since, and the store's config is the truth."""
    recorded = json_attribute(check_store(out / STORE_NAME)[1], "config", {})
    try:
        trained = from_dict(recorded, f"{out / STORE_NAME} (its config attribute)")
    except ConfigError as err:
        raise ConfigError(f"{out}: the store's recorded config is not a valid config ({err}); it cannot be resumed") from None
    diff = config_differences(trained, config)
    if diff:
        raise ConfigError(f"{out}: config.toml differs from the config the store was trained with ({'; '.join(diff[:3])}"
                          f"{'; ...' if len(diff) > 3 else ''}); put the recorded values back to resume it")


def how_to_continue(path: Path) -> str:
    """What continues the stopped run in ``path``, from what its folder holds."""
    command = f"phasefit train {path / 'config.toml'} --out {path}"
    if not (path / STORE_NAME).exists():
        return f"it had not started; start it with: {command}"
    if writer_busy(path / STORE_NAME):
        return "another process is training it now"
    if (path / "checkpoints" / RESUME).exists():
        return f"its resume state is saved; continue with: {command} --resume"
    return f"it has no resume state; start it over with: {command} --restart"


def train_folder(path: Path, config: Config, device: torch.device, resume: bool,
                 progress: bool | None = False) -> tuple[int, str]:
    """Train the prepared run in ``path``: (exit code, what to print)."""
    return train_folders([path], [config], device, [resume], progress)[0]


def train_folders(paths: list[Path], configs: list[Config], device: torch.device, resume: list[bool],
                  progress: bool | None = False) -> list[tuple[int, str]]:
    """Train prepared runs, one alone or several as a pack (trainer/pack.py): (exit code, what to
    print) for each. The one place that says what a diverged loss, running out of GPU memory or
    disk, and Ctrl-C (or SIGTERM) mean."""
    from trainer.loop import Diverged, train
    from trainer.pack import train_pack

    try:
        if len(paths) == 1:
            results = [train(configs[0], paths[0], device, resume=resume[0], progress=progress)]
        else:
            results = train_pack(configs, paths, device, resume, progress=progress)
    except Diverged as err:  # a run alone (a pack's members fail one by one, below)
        results = [err]
    except (CheckpointError, StoreError, OSError) as err:  # a full disk, a folder gone read-only
        return [(1, f"phasefit: {path}: failed: {err}; {how_to_continue(path)}") for path in paths]
    except torch.cuda.OutOfMemoryError:
        b, k = configs[0].train.batch_size, len(paths)
        hint = f"a smaller pack than {k} (--pack), or " if k > 1 else ""
        return [(2, f"phasefit: error: {path}: out of GPU memory at train.batch_size={b}, eval.batch_size="
                    f"{configs[0].eval.batch_size}{f' in a pack of {k}' if k > 1 else ''}; try {hint}"
                    f"--set train.batch_size={max(1, b // 2)} or a smaller eval.batch_size") for path in paths]
    except KeyboardInterrupt:  # the loop saved the resume states, if it had started, before it let this through
        return [(130, f"phasefit: {path}: interrupted; {how_to_continue(path)}") for path in paths]
    return [finished(path, result) for path, result in zip(paths, results)]


def finished(path: Path, result) -> tuple[int, str]:
    """(exit code, line) of a run that trained to its end (a Summary) or diverged (a Diverged)."""
    if isinstance(result, Exception):
        return 1, f"phasefit: {path}: failed: {result} (the store is marked failed and stays readable)"
    rate = result.steps / result.wall_s if result.wall_s else float("nan")
    parts = ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in result.timings.items())
    return 0, (f"{path}: {result.status}, {result.steps} steps in {result.wall_s:.1f} s ({rate:.1f} steps/s), "
               f"final train loss {result.final_loss:.3f}, accuracy {result.final_accuracy:.3f} on trained facts\n"
               f"  of which {parts}")


def train_from_cli(config_path: str, out: str | None, overrides: list[str], device: str, resume: bool,
                   restart: bool = False) -> int:
    """``phasefit train``: a new run in a folder of its own, ``--resume`` of a partial one, or
    ``--restart`` of a partial one from scratch (its store and checkpoints deleted)."""
    config = with_absolute_paths(load_config(config_path, overrides))
    run_dir = Path(out) if out else Path("runs") / (config.name or Path(config_path).stem)
    dev = resolve_device(device)
    if resume and restart:
        raise ConfigError("--resume and --restart: choose one (continue the run, or start it over)")
    if resume:
        check_resumable(config, run_dir)
    elif restart:
        start_over(config, run_dir)
    else:
        prepare_run(config, run_dir)
    stop_on_sigterm()
    code, line = train_folder(run_dir, config, dev, resume, progress=sys.stderr.isatty() or None)
    print(line, file=sys.stdout if code == 0 else sys.stderr)
    return code


def start_over(config: Config, out: Path) -> None:
    """For ``--restart``: delete the partial run in ``out`` (of this config), keeping its config.toml."""
    state, why = run_state(out, config)
    if state != "partial":
        raise ConfigError({"new": f"{out}: no run to restart (no {STORE_NAME}); train it without --restart",
                           "complete": f"{out}: the run is complete; delete it yourself to train it again"}.get(state, why))
    check_writable(out)
    for stale in [out / STORE_NAME, out / "checkpoints", *out.glob(f"{STORE_NAME}.creating-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def stop_on_sigterm() -> None:
    """SIGTERM (a scheduler's stop, a cancelled job, ``kill``) stops training as Ctrl-C does:
    between steps, with the resume state saved.

    A process started in the background by a non-interactive shell (``phasefit sweep ... &`` in
    a script) inherits SIGINT ignored: Ctrl-C's handler is then called directly, and SIGINT
    (how a sweep asks its runs to stop) is honoured again."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def as_ctrl_c(signum, frame):
        handler = signal.getsignal(signal.SIGINT)
        if not callable(handler):
            raise KeyboardInterrupt
        handler(signal.SIGINT, frame)

    signal.signal(signal.SIGTERM, as_ctrl_c)


def train_runs(paths: list[Path], device: str) -> int:
    """Bring the runs in ``paths`` to completion (a sweep's worker process), those that can share
    a step as packs; returns the worst exit code.

    Decided here, when the runs start, rather than when the sweep is planned, so that a task
    a Dask cluster reschedules (a worker lost mid-run) resumes instead of starting again:
    nothing if complete, resume from a saved state, start over a store without one.
    """
    from trainer.checkpoints import saved_step
    from trainer.pack import pack_key

    dev = resolve_device(device)
    codes, packs = [], {}
    for path in paths:
        state, how = run_state(path)
        if state == "complete":
            print(f"{path}: already complete")
            codes.append(0)
            continue
        if state in ("busy", "damaged"):
            print(f"phasefit: {how}" if state == "busy" else f"phasefit: error: {how}")
            codes.append(3 if state == "busy" else 2)
            continue
        try:
            config = from_dict(read_toml(path / "config.toml"), str(path / "config.toml"))
            check_references(config)
            resume = how == "resume"
            if resume:
                check_recorded_config(config, path)
                check_writable(path)
            elif state == "partial":  # no resume state (killed before its first one): start over
                start_over(config, path)
            start = saved_step(path / "checkpoints") if resume else 0
        except (ConfigError, StoreError) as err:  # bad input: one line, and the other runs go on
            print(f"phasefit: error: {err}")
            codes.append(2)
            continue
        key = (start, pack_key(config)) if pack_key(config) else (path,)  # runs that cannot share a step: alone
        packs.setdefault(key, []).append((path, config, resume))
    for members in packs.values():
        along = f", in a pack of {len(members)}" if len(members) > 1 else ""
        for path, _, resume in members:
            print(f"{path}: {'resuming' if resume else 'starting'} on {dev} ({torch.get_num_threads()} CPU threads"
                  f"{along})", flush=True)
        paths_, configs, resume = map(list, zip(*members))
        for code, line in train_folders(paths_, configs, dev, resume):
            print(line)
            codes.append(code)
    return max(codes, default=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.run", description="Train run folders to completion "
                                     "(a sweep's worker process), those that can share a step as packs.")
    parser.add_argument("run_dir", nargs="+")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    stop_on_sigterm()
    try:
        code = train_runs([Path(p) for p in args.run_dir], args.device)
    except (ConfigError, StoreError) as err:  # bad input: one line
        print(f"phasefit: error: {err}")
        code = 2
    except Exception as err:  # the traceback in the log, its last line for the sweep's report
        traceback.print_exc(file=sys.stdout)
        print(f"phasefit: {' '.join(args.run_dir)}: failed: {type(err).__name__}: {err}")
        code = 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a late second Ctrl-C must not garble the exit
    return code


if __name__ == "__main__":
    sys.exit(main())
