"""Configuration: TOML presets read into dataclasses, validated once at the edge.

A config has six sections (``world``, ``sampling``, ``model``, ``train``, ``eval``, ``patch``) plus a
top-level ``seed`` and optional ``name``. ``load_config`` reads a file, applies ``--set``
overrides (``section.key=value``, the value parsed as TOML), and validates every key. Bad
input raises ``ConfigError`` with one line naming the key and the reason.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from logstore.schema import flatten_config


class ConfigError(ValueError):
    """A configuration key is unknown, of the wrong type, or holds an impossible value."""


PATCHED = "patched"  # a condition's ``only``: it describes patched runs only


def condition(short: str, only: str = "") -> dict:
    """Field metadata: the key is one of the conditions that describe a run, named ``short``
    (the store's ``conditions`` attribute, phasefit's tables). ``only``: a sampling kind, or
    PATCHED, when it describes only runs of that kind (or patched runs)."""
    return {"condition": short, "only": only}


@dataclass
class WorldConfig:
    """The population and its value sets (sizes as in the study at the paper preset)."""

    n_individuals: int = field(default=64_000, metadata=condition("N"))  # trained individuals
    n_heldout: int = 16_000  # never trained on: they measure hallucination
    n_finetune: int = field(default=0, metadata=condition("n_finetune"))  # new individuals for fine-tuning runs
    n_first_names: int = 900
    n_middle_names: int = 900
    n_last_names: int = 1000
    n_cities: int = 800  # shared by birth_city and current_city, drawn independently
    n_universities: int = 200
    n_majors: int = 100
    n_companies: int = 500
    year_min: int = 1900
    year_max: int = 2100
    n_templates: int = 25  # sentence templates per attribute
    n_eval_templates: int = 5  # of which each individual sees this many only at evaluation


TEMPLATES_WRITTEN = 25  # sentence templates per attribute in trainer/text.py

# Each sampling kind, and its condition in words (the store's ``condition_label``; formatted
# with s = the sampling section, w = the world section).
KIND_LABELS = {
    "uniform": "uniform",
    "power_law": "power law alpha={s.alpha:g}",
    "celebrities": "celebrities {s.celebrities}x{s.celebrity_weight:g}",
    "warmup": "warm-up {s.warmup_individuals}x{s.warmup_epochs:g}",
    "sequential": "sequential",
    "finetune": "fine-tune {w.n_finetune} new, replay {s.replay_weight:g}",
}
SAMPLING_KINDS = tuple(KIND_LABELS)


@dataclass
class SamplingConfig:
    """Who is sampled when. ``kind`` picks the schedule; the other keys parametrise it (each
    key's metadata names the kind it belongs to; trainer/sampling.py builds the schedule).

    - uniform: every trained individual equally often.
    - power_law: p(i) ~ (rank_i + 1) ** -alpha.
    - celebrities: the ``celebrities`` most frequent ranks sampled ``celebrity_weight`` times
      more often than the others.
    - warmup: uniform on the ``warmup_individuals`` first ranks for ``warmup_epochs`` epochs,
      then uniform on everyone.
    - sequential: ``n_groups`` groups of consecutive ranks, visited in order, the whole
      sequence ``n_repeats`` times, each visit an equal share of the steps.
    - finetune: the fine-tuning individuals uniformly, plus replay of the trained ones whose
      total probability mass is ``replay_weight`` times that of the new ones (0: no replay).
    """

    kind: str = field(default="uniform", metadata=condition("sampling"))
    alpha: float = field(default=0.0, metadata=condition("alpha", "power_law"))
    celebrities: int = field(default=0, metadata=condition("celebrities", "celebrities"))
    celebrity_weight: float = field(default=1.0, metadata=condition("celebrity_weight", "celebrities"))
    warmup_individuals: int = field(default=0, metadata=condition("warmup", "warmup"))
    warmup_epochs: float = field(default=1.0, metadata=condition("warmup_epochs", "warmup"))
    n_groups: int = field(default=1, metadata=condition("groups", "sequential"))
    n_repeats: int = field(default=1, metadata=condition("repeats", "sequential"))
    replay_weight: float = field(default=0.0, metadata=condition("replay", "finetune"))


MODEL_PRESETS = {
    # name: (n_layers, d_model, n_heads, d_mlp)
    "tiny": (1, 128, 4, 512),
    "paper": (8, 512, 8, 2048),
    "163M": (12, 896, 16, 3584),
    "400M": (12, 1536, 12, 6144),
}


@dataclass
class ModelConfig:
    """Decoder-only transformer. ``preset`` fills the sizes; explicit sizes override it."""

    preset: str = field(default="paper", metadata=condition("model"))
    n_layers: int = 0
    d_model: int = 0
    n_heads: int = 0
    d_mlp: int = 0

    def __post_init__(self) -> None:
        if self.preset in MODEL_PRESETS:
            for key, value in zip(("n_layers", "d_model", "n_heads", "d_mlp"), MODEL_PRESETS[self.preset]):
                if not getattr(self, key):
                    setattr(self, key, value)


@dataclass
class TrainConfig:
    """Optimisation (AdamW with cosine decay by default, as in the study)."""

    steps: int = field(default=16_000, metadata=condition("steps"))
    batch_size: int = field(default=128, metadata=condition("batch"))
    lr: float = field(default=4e-4, metadata=condition("lr"))
    lr_schedule: str = "cosine"  # cosine | constant
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 0
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = field(default=0.1, metadata=condition("wd"))
    grad_clip: float = 1.0
    init_from: str = ""  # a finished run directory to start from (fine-tuning)
    compile: str = "auto"  # auto | on | off (auto: on for CUDA)
    cuda_graphs: bool = True  # CUDA graphs for the compiled CUDA step (torch.compile's reduce-overhead mode)
    checkpoint_every_s: float = 300.0  # resume state at most this often (wall seconds)
    n_checkpoints: int = 8  # log-spaced weight checkpoints


@dataclass
class EvalConfig:
    """The evaluation plan: log-spaced early, linear later; dense subsets at large N."""

    n_evals: int = 160  # evaluation steps over the run
    log_fraction: float = 0.3  # share of evaluation steps spaced logarithmically early on
    subset: int = 2048  # trained (and fine-tuning) individuals evaluated at every step (0: everyone)
    heldout_subset: int = 512  # held-out individuals evaluated at every step (0: everyone)
    n_full: int = 8  # evaluation steps at which every individual is evaluated
    batch_size: int = 1024  # probe sequences per forward pass
    attention_probe: int = 64  # individuals in the fixed attention-signature batch


@dataclass
class PatchConfig:
    """Attention patching (the study's claim 3): from training step ``start`` on, every layer
    uses the attention weights that a reference run's checkpoint computes on the same batch.

    The run is the reference's twin (same world, model and seed, so the same initial
    parameters and batches); the reference gets no gradient; the optimiser state is reset when
    patching starts. ``start`` equal to ``reference_step`` freezes the run's own attention of
    that step from then on.
    """

    reference: str = ""  # the reference run's folder ("": no patching)
    # the checkpoint whose attention is used (-1: the final weights), and the step patching starts
    reference_step: int = field(default=-1, metadata=condition("patterns_from", PATCHED))
    start: int = field(default=0, metadata=condition("patch_start", PATCHED))


@dataclass
class Config:
    seed: int = 0
    name: str = ""
    world: WorldConfig = field(default_factory=WorldConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    patch: PatchConfig = field(default_factory=PatchConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def flat(self) -> dict:
        """{"seed": 0, "name": "", "world.n_individuals": 64000, ...}"""
        return flatten_config(self.to_dict())

    def conditions(self) -> dict:
        """The conditions that describe the run under their short names (``condition``), and its
        seed. Parameters of other sampling kinds, and of patching in an unpatched run, do not
        describe it."""
        out = {}
        for section in SECTIONS:
            values = getattr(self, section)
            for f in dataclasses.fields(values):
                short, only = f.metadata.get("condition"), f.metadata.get("only")
                if short is None or (only == PATCHED and not self.patch.reference):
                    continue
                if only in ("", PATCHED) or only == self.sampling.kind:
                    out[short] = getattr(values, f.name)
        out["seed"] = self.seed
        return out

    def condition_label(self) -> str:
        """The sampling condition in words: uniform, power law alpha=0.7, warm-up 4000x2, ..."""
        return KIND_LABELS[self.sampling.kind].format(s=self.sampling, w=self.world)


_SECTION_CLASSES = {
    "world": WorldConfig,
    "sampling": SamplingConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "patch": PatchConfig,
}
SECTIONS = tuple(_SECTION_CLASSES)


def _typed(where: str, value, kind):
    """Return ``value`` as ``kind`` (int, float, str or bool), or raise ConfigError."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
    if kind is str and "\0" in value:  # a path with one cannot be opened; no key needs one
        raise ConfigError(f"{where}: contains a NUL byte ({value!r})")
    return value


def from_dict(data: dict, source: str = "config") -> Config:
    """Build and validate a Config from nested dicts (as read from TOML)."""
    data = dict(data)
    top = {}
    for key in ("seed", "name"):
        if key in data:
            top[key] = _typed(f"{source}: {key}", data.pop(key), int if key == "seed" else str)
    sections = {}
    for section, values in data.items():
        if section not in _SECTION_CLASSES:
            raise ConfigError(f"{source}: unknown key '{section}' (sections: seed, name, {', '.join(_SECTION_CLASSES)})")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: '{section}' must be a table")
        cls = _SECTION_CLASSES[section]
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(f"{source}: unknown key '{section}.{key}' (known: {', '.join(hints)})")
            kwargs[key] = _typed(f"{source}: {section}.{key}", value, hints[key])
        sections[section] = cls(**kwargs)
    config = Config(**top, **sections)
    validate(config, source)
    return config


def _check(ok: bool, source: str, key: str, reason: str) -> None:
    if not ok:
        raise ConfigError(f"{source}: {key} {reason}")


def validate(c: Config, source: str = "config") -> None:
    """Reject impossible values with one line naming the key and the reason."""
    w, s, m, t, e = c.world, c.sampling, c.model, c.train, c.eval
    for section in SECTIONS:  # inf and nan pass most bounds below, and config.toml cannot hold them
        for f in dataclasses.fields(getattr(c, section)):
            value = getattr(getattr(c, section), f.name)
            _check(not isinstance(value, float) or math.isfinite(value), source, f"{section}.{f.name}",
                   f"must be a finite number, not {value}")
    _check(0 <= c.seed < 2**63, source, "seed", f"must be between 0 and 2**63 - 1, not {c.seed}")
    _check(c.name not in (".", "..") and not any(ch in c.name for ch in "/\\"), source, "name",
           f"must be a plain name (it names the run's folder), not {c.name!r}")
    for key in ("n_individuals", "n_first_names", "n_middle_names", "n_last_names", "n_cities",
                "n_universities", "n_majors", "n_companies", "n_templates", "n_eval_templates"):
        _check(getattr(w, key) >= 1, source, f"world.{key}", "must be at least 1")
    for key in ("n_heldout", "n_finetune"):
        _check(getattr(w, key) >= 0, source, f"world.{key}", "must be non-negative")
    _check(w.n_templates <= TEMPLATES_WRITTEN, source, "world.n_templates",
           f"must be at most {TEMPLATES_WRITTEN} (templates written per attribute)")
    _check(w.year_max >= w.year_min, source, "world.year_max", "must not be before world.year_min")
    _check(w.year_max - w.year_min < 10_000, source, "world.year_max",
           f"must be within 10000 years of world.year_min (every year is a word of the vocabulary), not {w.year_max}")
    _check(w.n_eval_templates < w.n_templates, source, "world.n_eval_templates",
           f"must be smaller than world.n_templates ({w.n_templates}) to leave training templates")
    n_names = w.n_first_names * w.n_middle_names * w.n_last_names
    total = w.n_individuals + w.n_heldout + w.n_finetune
    _check(total <= n_names, source, "world.n_heldout",
           f"too large: {total} individuals in all but only {n_names} distinct full names")

    _check(s.kind in SAMPLING_KINDS, source, "sampling.kind", f"must be one of {', '.join(SAMPLING_KINDS)}, not {s.kind!r}")
    _check(s.alpha >= 0 and math.isfinite(s.alpha), source, "sampling.alpha", f"must be >= 0, not {s.alpha}")
    _check(0 <= s.celebrities <= w.n_individuals, source, "sampling.celebrities",
           f"must be between 0 and world.n_individuals ({w.n_individuals})")
    _check(s.celebrity_weight > 0, source, "sampling.celebrity_weight", "must be positive")
    _check(0 <= s.warmup_individuals <= w.n_individuals, source, "sampling.warmup_individuals",
           f"must be between 0 and world.n_individuals ({w.n_individuals}), not {s.warmup_individuals}")
    if s.kind == "warmup":
        _check(s.warmup_individuals >= 1, source, "sampling.warmup_individuals", "must be at least 1 for a warm-up")
    _check(s.warmup_epochs > 0, source, "sampling.warmup_epochs", "must be positive")
    _check(1 <= s.n_groups <= w.n_individuals, source, "sampling.n_groups", "must be between 1 and world.n_individuals")
    _check(s.n_repeats >= 1, source, "sampling.n_repeats", "must be at least 1")
    _check(s.replay_weight >= 0, source, "sampling.replay_weight", "must be >= 0")
    if s.kind == "finetune":
        _check(w.n_finetune >= 1, source, "world.n_finetune", "must be at least 1 for sampling.kind = 'finetune'")
        _check(bool(t.init_from), source, "train.init_from", "must name a finished run for sampling.kind = 'finetune'")

    _check(m.preset in MODEL_PRESETS or all((m.n_layers, m.d_model, m.n_heads, m.d_mlp)), source, "model.preset",
           f"must be one of {', '.join(MODEL_PRESETS)} (or give n_layers, d_model, n_heads, d_mlp)")
    for key in ("n_layers", "d_model", "n_heads", "d_mlp"):
        _check(getattr(m, key) >= 1, source, f"model.{key}", "must be at least 1")
    _check(m.d_model % m.n_heads == 0, source, "model.n_heads", f"must divide model.d_model ({m.d_model})")

    _check(t.steps >= 1, source, "train.steps", "must be at least 1")
    _check(t.batch_size >= 1, source, "train.batch_size", "must be at least 1")
    _check(t.lr > 0, source, "train.lr", "must be positive")
    _check(t.lr_schedule in ("cosine", "constant"), source, "train.lr_schedule", "must be 'cosine' or 'constant'")
    _check(0 <= t.min_lr_ratio <= 1, source, "train.min_lr_ratio", "must be between 0 and 1")
    _check(0 <= t.warmup_steps < t.steps, source, "train.warmup_steps",
           f"must be at least 0 and below train.steps ({t.steps}), not {t.warmup_steps}")
    _check(0 <= t.beta1 < 1 and 0 <= t.beta2 < 1, source, "train.beta1", "betas must be in [0, 1)")
    _check(t.weight_decay >= 0, source, "train.weight_decay", "must be >= 0")
    _check(t.grad_clip >= 0, source, "train.grad_clip", "must be >= 0 (0 disables clipping)")
    _check(t.compile in ("auto", "on", "off"), source, "train.compile", "must be auto, on or off")
    _check(t.n_checkpoints >= 0, source, "train.n_checkpoints", "must be >= 0")
    _check(t.checkpoint_every_s > 0, source, "train.checkpoint_every_s", "must be positive (seconds)")

    _check(e.n_evals >= 2, source, "eval.n_evals", "must be at least 2")
    _check(0 <= e.log_fraction <= 1, source, "eval.log_fraction", "must be between 0 and 1")
    _check(e.subset >= 0, source, "eval.subset", "must be >= 0 (0: everyone at every step)")
    _check(e.heldout_subset >= 0, source, "eval.heldout_subset", "must be >= 0 (0: everyone at every step)")
    _check(e.n_full >= 0, source, "eval.n_full", "must be >= 0")
    _check(e.batch_size >= 1, source, "eval.batch_size", "must be at least 1")
    _check(e.attention_probe >= 1, source, "eval.attention_probe", "must be at least 1")

    p = c.patch
    _check(p.reference_step >= -1, source, "patch.reference_step", "must be a checkpoint step, or -1 for the final weights")
    _check(0 <= p.start < t.steps, source, "patch.start", f"must be at least 0 and below train.steps ({t.steps}), not {p.start}")


TOO_DEEP = "arrays or tables nested too deeply to read (hundreds of levels)"


def parse_override(text: str) -> tuple[list[str], object]:
    """Parse ``section.key=value``; the value is read as TOML, or as a bare string."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected key=value")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    except RecursionError:
        raise ConfigError(f"--set {key.strip()}: {TOO_DEEP}") from None
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text}: '{part}' is not a table")
        node[path[-1]] = value
    return data


def read_toml(path: str | Path) -> dict:
    """A TOML file as a dict (a leading byte-order mark is accepted), or one ConfigError line."""
    if "\0" in str(path):
        raise ConfigError(f"{str(path)!r}: a path with a NUL byte")
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8").removeprefix("\ufeff")
        return tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a folder, not a TOML file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    except RecursionError:
        raise ConfigError(f"{path}: {TOO_DEEP}") from None
    except OSError as err:  # not readable by this user, an I/O error
        raise ConfigError(f"{path}: cannot be read ({err.strerror or err})") from None


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a TOML preset, apply ``key=value`` overrides, and validate."""
    data = apply_overrides(read_toml(path), list(overrides))
    return from_dict(data, source=str(path))
