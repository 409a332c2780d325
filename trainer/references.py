"""Runs that a run builds on: the finished run a fine-tuning run starts from
(``train.init_from``) and the run whose attention a patched run borrows (``patch.reference``).

A reference must be a finished run of the same world (the same trained individuals, text and
vocabulary; only the numbers of held-out and fine-tuning individuals may differ), the same
model sizes and the same seed. Problems are found before a run starts, as one line.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from trainer import checkpoints
from trainer.config import Config, ConfigError, from_dict, read_toml

MAY_DIFFER = ("n_heldout", "n_finetune")  # world keys a run may change against its reference
MODEL_SIZES = ("n_layers", "d_model", "n_heads", "d_mlp")


def check_reference(path: str, config: Config, key: str) -> Config:
    """The reference run's config, after checking that ``config`` may build on it."""
    saved = Path(path) / "config.toml"
    if not saved.exists():
        raise ConfigError(f"{key} = {path}: not a run folder (no config.toml)")
    reference = from_dict(read_toml(saved), str(saved))
    final = Path(path) / "checkpoints" / checkpoints.FINAL
    if not final.exists():
        raise ConfigError(f"{key} = {path}: the run has not finished (no checkpoints/{checkpoints.FINAL})")
    checkpoints.check_weights(final, key)
    pairs = [(f"world.{k}", getattr(reference.world, k), v) for k, v in dataclasses.asdict(config.world).items()
             if k not in MAY_DIFFER]
    pairs += [(f"model.{k}", getattr(reference.model, k), getattr(config.model, k)) for k in MODEL_SIZES]
    pairs += [("seed", reference.seed, config.seed)]
    for name, there, here in pairs:
        if there != here:
            raise ConfigError(f"{key} = {path}: {name} is {there!r} there and {here!r} here "
                              f"(a reference must have the same world, model and seed)")
    return reference


def weights_file(path: str, step: int, key: str) -> Path:
    """The reference's weights at ``step`` (-1: the final weights)."""
    directory = Path(path) / "checkpoints"
    if step == -1:
        return directory / checkpoints.FINAL
    file = checkpoints.weights_path(directory, step)
    if not file.exists():
        kept = sorted(int(p.stem.split("_")[1]) for p in directory.glob("step_*.safetensors"))
        raise ConfigError(f"{key} = {step}: {path} kept no weights of that step (it kept steps "
                          f"{', '.join(map(str, kept))}, and -1 gives the final weights)")
    return file


def check_references(config: Config, keys: tuple[str, ...] = ("train.init_from", "patch.reference")) -> None:
    """Check the runs that ``config`` names (under ``keys``) before the run starts."""
    if config.train.init_from and "train.init_from" in keys:
        check_reference(config.train.init_from, config, "train.init_from")
    if config.patch.reference and "patch.reference" in keys:
        check_reference(config.patch.reference, config, "patch.reference")
        step = config.patch.reference_step
        checkpoints.check_weights(weights_file(config.patch.reference, step, "patch.reference_step"), "patch.reference_step")


def with_absolute_paths(config: Config) -> Config:
    """``config`` with its references as absolute paths, so the store names them wherever it is read."""
    train = dataclasses.replace(config.train, init_from=str(Path(config.train.init_from).resolve())) \
        if config.train.init_from else config.train
    patch = dataclasses.replace(config.patch, reference=str(Path(config.patch.reference).resolve())) \
        if config.patch.reference else config.patch
    return dataclasses.replace(config, train=train, patch=patch)
