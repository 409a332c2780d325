"""``phasefit train``: resolve the config and device, prepare the run directory, train."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

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


def prepare_run(config: Config, out: Path, resume: bool) -> None:
    """Create ``out`` with its config.toml, or check that a run to resume has the same config."""
    saved = out / "config.toml"
    if resume:
        from trainer.sweep_run import store_state

        state, why = store_state(out)
        if state in ("complete", "busy", "conflict"):
            raise ConfigError(why or f"{out}: the run is already complete; nothing to resume")
        if not (out / "checkpoints" / "resume.safetensors").exists():
            raise ConfigError(f"{out}: nothing to resume (no checkpoints/resume.safetensors)")
        if from_dict(read_toml(saved), str(saved)) != config:
            raise ConfigError(f"{out}: the run was started with a different config; resume it with its own: "
                              f"phasefit train {saved} --out {out} --resume")
        return
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    if (out / "metrics.zarr").exists():
        raise ConfigError(f"{out}: a run already exists there (use --resume to continue it, or another --out)")
    store = next((p for p in [out, *out.resolve().parents] if p.suffix == ".zarr" or (p / "zarr.json").exists()), None)
    if store is not None:
        raise ConfigError(f"--out {out}: inside the metrics store {store}; give the run a folder of its own")
    if out.is_dir():
        from logstore.runs import find_runs

        held = list(find_runs(out))
        if held:
            raise ConfigError(f"--out {out}: a folder of {len(held)} runs ({held[0]}, ...); give the new run a "
                              f"folder of its own, e.g. --out {out / (config.name or 'run')}")
    check_references(config)
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(to_toml(config))


def train_from_cli(config_path: str, out: str | None, overrides: list[str], device: str, resume: bool) -> int:
    from trainer.loop import Diverged, train

    config = with_absolute_paths(load_config(config_path, overrides))
    run_dir = Path(out) if out else Path("runs") / (config.name or Path(config_path).stem)
    dev = resolve_device(device)
    prepare_run(config, run_dir, resume)
    try:
        summary = train(config, run_dir, dev, resume=resume, progress=sys.stderr.isatty() or None)
    except Diverged as err:
        print(f"phasefit: {run_dir}: failed: {err} (the store is marked failed and stays readable)", file=sys.stderr)
        return 1
    except torch.cuda.OutOfMemoryError:
        b = config.train.batch_size
        raise ConfigError(f"{run_dir}: out of GPU memory at train.batch_size={b}, eval.batch_size={config.eval.batch_size};"
                          f" try --set train.batch_size={max(1, b // 2)} or a smaller eval.batch_size") from None
    except KeyboardInterrupt:
        print(f"phasefit: {run_dir}: interrupted; continue with: phasefit train {run_dir / 'config.toml'} "
              f"--out {run_dir} --resume", file=sys.stderr)
        return 130
    rate = summary.steps / summary.wall_s if summary.wall_s else float("nan")
    print(f"{run_dir}: {summary.status}, {summary.steps} steps in {summary.wall_s:.1f} s ({rate:.1f} steps/s), "
          f"final train loss {summary.final_loss:.3f}, accuracy {summary.final_accuracy:.3f} on trained facts")
    parts = ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in summary.timings.items())
    print(f"  of which {parts}")
    return 0
