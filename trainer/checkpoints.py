"""Checkpoints in safetensors: log-spaced weights, the final weights, and the resume state.

Nothing here unpickles: weights and optimiser moments are tensors in safetensors files, and
the few scalars of the resume state (step, RNG state as bytes, wall time) sit beside them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from trainer.config import ConfigError

RESUME = "resume.safetensors"
FINAL = "final.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (a full disk, a read-only folder); the previous
    file of that name, if any, is untouched."""


def weights_path(directory: Path, step: int) -> Path:
    return directory / f"step_{step:08d}.safetensors"


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write to a temporary file and rename it, so a crash never leaves a torn checkpoint."""
    tmp = path.with_suffix(".tmp")
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except (OSError, SafetensorError) as err:  # safetensors reports a full disk as its own error
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"{path}: cannot be written ({getattr(err, 'strerror', None) or err})") from err


def save_weights(model: torch.nn.Module, path: Path, step: int) -> None:
    _atomic_save(dict(model.state_dict()), path, {"step": str(step)})


def check_weights(path: Path, key: str) -> None:
    """``path`` (the weights a run builds on, named by config key ``key``) can be read: a
    truncated or damaged file is refused before the run writes anything."""
    try:
        with safe_open(str(path), "pt") as f:
            f.keys()
    except (OSError, SafetensorError) as err:
        raise ConfigError(f"{key}: {path} cannot be read ({getattr(err, 'strerror', None) or err}); "
                          "train that run again, or name another") from None


def load_weights(model: torch.nn.Module, path: Path, key: str) -> None:
    check_weights(path, key)
    model.load_state_dict(load_file(str(path), device=str(next(model.parameters()).device)))


def checkpoint_steps(total: int, n: int) -> set[int]:
    """``n`` log-spaced steps in [1, total] at which weights are kept for later analyses."""
    return set(np.unique(np.geomspace(1, total, n).round().astype(int)).tolist()) if n else set()


def save_resume(directory: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                generator: torch.Generator, exposures: torch.Tensor, elapsed: float) -> None:
    """Everything needed to continue at ``step`` exactly as an uninterrupted run would."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        for key, value in optimizer.state.get(p, {}).items():
            tensors[f"optim.{i}.{key}"] = value if value.dim() else value.reshape(1)
    tensors["generator"] = generator.get_state()
    tensors["exposures"] = exposures
    _atomic_save(tensors, directory / RESUME, {"step": str(step), "elapsed": json.dumps(elapsed)})


def saved_step(directory: Path) -> int:
    """The step of the resume state in ``directory`` (read from its header alone)."""
    try:
        with safe_open(str(directory / RESUME), "pt") as f:
            return int(f.metadata()["step"])
    except Exception as err:  # as load_resume: a damaged file
        raise damaged(directory / RESUME, err) from None


def damaged(path: Path, err: Exception) -> ConfigError:
    return ConfigError(f"{path}: cannot read the resume state ({type(err).__name__}: {err}); the store is "
                       "untouched: start the run again in another --out")


def load_resume(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                generator: torch.Generator, exposures: torch.Tensor) -> tuple[int, float]:
    """Restore a resume state in place; returns (step, elapsed wall seconds before it)."""
    from safetensors import safe_open

    path = directory / RESUME
    device = str(exposures.device)
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata()
        tensors = load_file(str(path), device=device)
        step, elapsed = int(metadata["step"]), float(json.loads(metadata["elapsed"]))
    except Exception as err:  # safetensors' own error, OSError, a missing key: the file is damaged
        raise damaged(path, err) from None
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        state = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"optim.{i}.")}
        if "step" in state:
            state["step"] = state["step"].reshape(()).cpu()
        if state:
            optimizer.state[p] = state
    generator.set_state(tensors["generator"].cpu())
    exposures.copy_(tensors["exposures"])
    return step, elapsed
