"""Intervention runs: fine-tuning on new individuals, attention patching, sequential groups.

Each measure reads a run's store (or the ``Summary`` that ``detect`` already made of it, when
``phasefit.analyse`` combines them) and answers one of the study's questions (docs/study.md,
claims 3 and 7). Steps are training steps of the run itself (a fine-tuning run counts from 0,
the pretrained model). The crossings here are read on short spans after an event (the start
of fine-tuning, of a visit), so they are interpolated linearly in step
(``phasefit.rules.crossing`` on the steps), not in log-step as the phase boundaries are.

- **Fine-tuning** (``finetune_effects``): the old individuals (split ``train``, known at step
  0) against the new ones (split ``finetune``). With a(t) the old accuracy, a0 = a(first
  evaluation) and m = min_t a(t): collapse depth = a0 - m; collapse step = the first
  evaluation step at which a(t) <= a0 - (a0 - m) / 2, interpolated linearly between it and
  the evaluation before; final old accuracy = a(last evaluation). New knowledge: the new
  acquisition step is the step by which half of the new facts are acquired (the median of the
  per-fact acquisition steps, a fact never acquired counting as later than every step),
  missing when fewer than half are ever acquired; final new accuracy. Each with a percentile
  bootstrap interval over individuals (the old ones for the old measures, the new ones for the
  new), as ``detect``'s intervals.
- **Patching** (``patching_effect``): the plateau (t2 and plateau length, ``detect``'s
  detector and intervals) of a patched run next to that of its reference run, and the
  differences patched minus reference with percentile intervals over paired replicates.
- **Sequential groups** (``sequential_groups``): the accuracy curve of each group, and per
  visit the steps the visited group takes to learn and, after the visit, to forget. The
  visits are the stages of the run's sampling schedule (the store's ``stages``), the group of
  a visit the train individuals of its rank range.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from phasefit import bootstrap, facts
from phasefit.phases import detect
from phasefit.rules import crossing
from phasefit.runs import RunInfo, is_run, open_run, run_info
from phasefit.summary import Summary, population_curves, summarise


def _dataset(source) -> xr.Dataset:
    return open_run(source) if isinstance(source, (str, Path)) else source


def _value(x) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def _interval(values: np.ndarray, level: float) -> list | None:
    found = bootstrap.percentile_interval(values, level)
    return None if found is None else [found[0], found[1]]


def first_crossing(steps: np.ndarray, values: np.ndarray, level: np.ndarray) -> np.ndarray:
    """For each row of ``values`` (rows, steps), the first step at which it is <= ``level``
    (one per row), linearly interpolated between that evaluation and the one before; the first
    step itself if it starts there; NaN if it never gets there. For a rise, negate both."""
    below = values <= level[:, None]
    k = below.argmax(axis=1)
    step = np.where(k > 0, crossing(steps, values, k - 1, level), steps[0])
    return np.where(below.any(axis=1), step, np.nan)


# ----------------------------------------------------------------------------- fine-tuning

def _split_curve(curves: xr.Dataset, split: str, name: str = "mean_accuracy") -> tuple[np.ndarray, np.ndarray]:
    """Steps at which ``split`` was evaluated and its population curve there."""
    values = curves[name].sel(split=split).values
    keep = np.isfinite(values)
    return curves["step"].values[keep].astype(float), values[keep]


def collapse(steps: np.ndarray, accuracy: np.ndarray) -> dict[str, np.ndarray]:
    """Start, minimum, collapse depth, collapse step and final value of each row of old
    accuracy (rows, steps); see the module docstring. No collapse (depth 0): step NaN."""
    start, low = accuracy[:, 0], accuracy.min(axis=1)
    depth = start - low
    step = first_crossing(steps, accuracy, start - depth / 2)
    return {"old_accuracy_start": start, "old_accuracy_min": low, "collapse_depth": depth,
            "collapse_step": np.where(depth > 0, step, np.nan), "old_accuracy_final": accuracy[:, -1]}


def _half_acquired(counts: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Step by which half of the facts are acquired, per row of ``counts`` (rows, steps + 1):
    facts acquired at each evaluation, the last column those never acquired. NaN: never half."""
    share = np.cumsum(counts[:, :-1], axis=1) / counts.sum(axis=1, keepdims=True)
    reached = share >= 0.5
    return np.where(reached.any(axis=1), steps[reached.argmax(axis=1)], np.nan)


FINETUNE_MEASURES = ("old_accuracy_start", "collapse_depth", "collapse_step", "old_accuracy_final",
                     "new_acquisition_step", "new_accuracy_final")


def finetune_effects(source, n_boot: int = 200, level: float = 0.95, seed: int = 0) -> dict:
    """Forgetting of old knowledge and learning of new facts in a fine-tuning run.

    ``source``: a run folder or a store-schema Dataset. Returns a JSON-able dict with
    ``old_accuracy_start``, ``collapse_depth``, ``collapse_step`` (steps), ``old_accuracy_final``,
    ``new_acquisition_step`` (steps), ``new_accuracy_final``, each with a ``*_ci`` [low, high]
    (``level`` percentile bootstrap over individuals, ``n_boot`` replicates); also
    ``old_accuracy_min`` and its step, ``new_acquired`` (share of new facts acquired by the
    last evaluation), ``n_old``, ``n_new``, ``replay_weight`` and ``notes`` (why a measure
    is missing). Definitions: the module docstring and docs/phasefit.md.
    """
    ds = _dataset(source)
    return finetune_measures(ds, run_info(ds), summarise(ds), n_boot, level, seed)


def finetune_measures(ds: xr.Dataset, info: RunInfo, summary: Summary, n_boot: int = 200, level: float = 0.95,
                      seed: int = 0) -> dict:
    """``finetune_effects`` from the run's attributes and ``Summary`` (``analyse`` passes those
    ``detect`` read and made)."""
    split = ds["split"].values
    out = {key: None for m in FINETUNE_MEASURES for key in (m, f"{m}_ci")}
    out.update(old_accuracy_min=None, old_accuracy_min_step=None, new_acquired=None,
               n_old=int((split == "train").sum()), n_new=int((split == "finetune").sum()),
               replay_weight=(info.config.get("sampling") or {}).get("replay_weight"), notes=[])
    if out["n_new"] == 0:
        out["notes"].append("no finetune split: the store has no new individuals, so this is not a fine-tuning run")
        return out
    if out["n_old"] == 0:
        out["notes"].append("no train split: the store has no old individuals whose forgetting could be measured")
        return out
    curves = population_curves(summary)
    rng = np.random.default_rng(seed)

    steps, old = _split_curve(curves, "train")
    if len(steps) < 2:
        out["notes"].append(f"old individuals evaluated at {len(steps)} steps: too few to measure a collapse")
    else:
        if steps[0] != 0:
            out["notes"].append(f"first evaluation of the old individuals at step {steps[0]:.0f}, not 0: "
                                "the start is measured there")
        reps = bootstrap.replicate_curves(summary.individual, "train", steps, n_boot, rng, ("n_correct",))["n_correct"]
        reps = np.where(np.isfinite(reps), reps, old[None])  # a replicate step with nobody evaluated
        point, boot = collapse(steps, old[None]), collapse(steps, reps)
        for key in ("old_accuracy_start", "collapse_depth", "collapse_step", "old_accuracy_final"):
            out[key] = _value(point[key][0])
            out[f"{key}_ci"] = _interval(boot[key], level) if out[key] is not None else None
        out["old_accuracy_min"] = _value(point["old_accuracy_min"][0])
        out["old_accuracy_min_step"] = float(steps[np.argmin(old)])
        if out["collapse_step"] is None:
            out["notes"].append("no collapse: old accuracy never fell below its start")

    _new_knowledge(ds, summary, curves, out, n_boot, level, rng)
    return out


def _new_knowledge(ds, summary, curves, out: dict, n_boot: int, level: float, rng) -> None:
    """New acquisition step and final new accuracy, with intervals over new individuals."""
    all_steps = ds["step"].values.astype(float)
    acquired = facts.acquisition(ds, summary, split="finetune")["acquisition_step"].values  # (individual, attribute)
    n_new, n_attributes = acquired.shape
    position = np.where(np.isnan(acquired), len(all_steps), np.searchsorted(all_steps, np.nan_to_num(acquired)))
    cell = np.arange(n_new)[:, None] * (len(all_steps) + 1) + position
    counts = np.bincount(cell.ravel(), minlength=n_new * (len(all_steps) + 1)).reshape(n_new, -1).astype(np.float32)
    out["new_acquired"] = float(np.isfinite(acquired).mean())
    out["new_acquisition_step"] = _value(_half_acquired(counts.sum(axis=0, keepdims=True), all_steps)[0])
    if out["new_acquisition_step"] is None:
        out["notes"].append(f"no new acquisition step: only {out['new_acquired']:.1%} of the new facts were acquired "
                            f"by the last evaluation (step {all_steps[-1]:.0f}); the median needs half")
    elif n_boot:
        with bootstrap.single_threaded_blas():
            replicated = bootstrap.resample_weights(n_new, n_boot, rng) @ counts
        out["new_acquisition_step_ci"] = _interval(_half_acquired(replicated, all_steps), level)

    steps, new = _split_curve(curves, "finetune")
    if len(steps):
        out["new_accuracy_final"] = float(new[-1])
        reps = bootstrap.replicate_curves(summary.individual, "finetune", steps[-1:], n_boot, rng, ("n_correct",))
        out["new_accuracy_final_ci"] = _interval(reps["n_correct"][:, 0], level)


# ----------------------------------------------------------------------------- patching

PLATEAU_FIELDS = ("t1", "t2", "t2_ci", "plateau_length", "plateau_ci", "final_accuracy", "last_step")


def patching_effect(source, n_boot: int = 200, level: float = 0.95, seed: int = 0, method: str = "auto") -> dict:
    """The plateau of a patched run (config section ``[patch]``) next to its reference run's.

    ``source``: a run folder or a store-schema Dataset. Returns a JSON-able dict:
    ``reference`` (the reference run's folder), ``reference_step``, ``start``,
    ``patterns_from`` (the reference step the attention comes from; its last step for -1),
    ``patterns_after_plateau`` (patterns_from > the reference's t2), ``patched`` and
    ``reference_run`` (t1, t2, t2_ci, plateau_length, plateau_ci, final_accuracy, last_step
    of each), ``t2_difference`` and ``plateau_difference`` (patched minus reference, steps)
    with ``*_ci``, ``paired`` and ``notes``. Both runs are measured by ``detect`` with ``method``.
    """
    ds = _dataset(source)
    phases = detect(ds, method, n_boot=n_boot, level=level, seed=seed, per_fact=False)
    return compare_with_reference(phases, ds, n_boot, level, seed, method)[0]


def _train_ids(ds: xr.Dataset) -> np.ndarray:
    return ds["individual"].values[ds["split"].values == "train"]


def compare_with_reference(phases, ds: xr.Dataset, n_boot: int = 200, level: float = 0.95, seed: int = 0,
                           method="auto", **params):
    """(the ``patching_effect`` dict, the reference run's ``Phases`` or None), from the
    ``Phases`` of a patched run and its Dataset; reads the reference run and measures it with
    the same ``method`` and detector ``params`` (``analyse`` calls this)."""
    from logstore import StoreError

    patch = phases.config.get("patch") or {}
    out = {"reference": patch.get("reference") or None, "reference_step": patch.get("reference_step"),
           "start": patch.get("start"), "patterns_from": None, "patterns_after_plateau": None, "paired": None,
           "patched": {k: getattr(phases, k) for k in PLATEAU_FIELDS}, "reference_run": None,
           "t2_difference": None, "t2_difference_ci": None, "plateau_difference": None,
           "plateau_difference_ci": None, "notes": []}
    if not out["reference"]:
        out["notes"].append("not a patched run: its config has no patch.reference")
        return out, None
    path = Path(out["reference"])
    if not (is_run(path) or (path.suffix == ".zarr" and path.is_dir())):
        out["notes"].append(f"reference run {path}: no such run folder (no metrics.zarr there)")
        return out, None
    try:
        ref_ds = open_run(path)
    except StoreError as err:
        out["notes"].append(f"reference run {path}: unreadable store: {err}")
        return out, None
    # With the same trained individuals in both runs, the same seed draws the same individuals
    # in every replicate of both (a paired bootstrap); otherwise they are drawn independently.
    out["paired"] = bool(np.array_equal(_train_ids(ds), _train_ids(ref_ds)))
    ref = detect(ref_ds, method, n_boot=n_boot, level=level, seed=seed if out["paired"] else seed + 1,
                 run=path.name, per_fact=False, **params)
    out["reference_run"] = {k: getattr(ref, k) for k in PLATEAU_FIELDS}
    out["notes"].extend(f"reference: {note}" for note in ref.notes)
    step = out["reference_step"]
    out["patterns_from"] = ref.last_step if step is None or step < 0 else float(step)
    if out["patterns_from"] is not None and ref.t2 is not None:
        out["patterns_after_plateau"] = bool(out["patterns_from"] > ref.t2)
    for name, key, value in (("t2", "t2_difference", lambda p: p.t2),
                             ("plateau_length", "plateau_difference", lambda p: p.plateau_length)):
        if value(phases) is None or value(ref) is None:
            out["notes"].append(f"no {key}: {name} missing in the {'patched' if value(phases) is None else 'reference'} run")
            continue
        out[key] = value(phases) - value(ref)
        if phases.replicates is not None and ref.replicates is not None:
            out[f"{key}_ci"] = _interval(_replicate(phases.replicates, name) - _replicate(ref.replicates, name), level)
    return out, ref


def _replicate(table: xr.DataArray, name: str) -> np.ndarray:
    """Bootstrap replicates of t2 or of the plateau length (t2 - t1 within each replicate)."""
    t2 = table.sel(boundary="t2").values
    return t2 if name == "t2" else t2 - table.sel(boundary="t1").values


# ----------------------------------------------------------------------------- sequential groups

def visit_groups(stages: list[dict]) -> tuple[list[tuple[int, int]], list[int | None]]:
    """The groups of a sequential schedule: the distinct rank ranges its stages sample, sorted
    ([lowest, highest] train-split ranks), and the group of each stage (None for a stage
    sampling outside the train split)."""
    ranges = sorted({tuple(s["ranks"]) for s in stages if s.get("ranks")})
    return ranges, [ranges.index(tuple(s["ranks"])) if s.get("ranks") else None for s in stages]


def group_of(ds: xr.Dataset, ranges: list[tuple[int, int]]) -> np.ndarray:
    """Each individual's group (-1 outside the train split and outside every range): the
    index of the rank range it falls in."""
    rank, train = ds["rank"].values, ds["split"].values == "train"
    group = np.full(ds.sizes["individual"], -1)
    for g, (low, high) in enumerate(ranges):
        group[train & (rank >= low) & (rank <= high)] = g
    return group


def group_curves(summary: Summary, group: np.ndarray, n_groups: int) -> xr.Dataset:
    """Accuracy and mean loss (nats) of each group's evaluated facts per step: (step, group)."""
    members = (group[:, None] == np.arange(n_groups)[None, :]).astype(np.float64)  # (individual, group)
    ind = summary.individual
    n = ind["n_evaluated"].values.astype(np.float64) @ members
    n[n == 0] = np.nan
    return xr.Dataset({"accuracy": (("step", "group"), (ind["n_correct"].values.astype(np.float64) @ members) / n),
                       "loss": (("step", "group"), (ind["loss_sum"].values.astype(np.float64) @ members) / n,
                                {"units": "nats"})},
                      coords={"step": ind["step"].values, "group": np.arange(n_groups)})


def sequential_groups(source) -> dict:
    """Learning and forgetting of sequentially trained groups of individuals.

    ``source``: a run folder or a store-schema Dataset of a run with ``sampling.kind =
    "sequential"``. Returns a dict: ``n_groups``, ``n_repeats``, ``bounds`` (visit
    boundaries, steps), ``groups`` (size and rank range of each), ``visits`` (one row per
    visit: visit, group, repeat, start, end, ``accuracy_start`` and ``accuracy_end`` of every
    group, ``learn_steps``, ``forget_steps``, ``others_drop``), ``median_learn_steps``,
    ``median_forget_steps``, ``notes``, and ``curves`` (Python only: the (step, group) Dataset
    of ``group_curves``). Definitions: docs/phasefit.md.
    """
    ds = _dataset(source)
    return sequential_measures(ds, run_info(ds), summarise(ds))


def sequential_measures(ds: xr.Dataset, info: RunInfo, summary: Summary) -> dict:
    """``sequential_groups`` from the run's attributes and ``Summary`` (``analyse`` passes
    those ``detect`` read and made)."""
    ranges, groups = visit_groups(info.stages)
    n_groups = len(ranges)
    n_repeats = max((groups.count(g) for g in range(n_groups)), default=0)
    out = {"n_groups": n_groups, "n_repeats": n_repeats, "bounds": [], "groups": [], "visits": [],
           "median_learn_steps": None, "median_forget_steps": None, "notes": [], "curves": None}
    kind = info.conditions.get("sampling", "uniform")
    if kind != "sequential":
        out["notes"].append(f"not a sequential run: sampling.kind is {kind!r}")
        return out
    if not n_groups or ds.sizes.get("step", 0) < 2:
        out["notes"].append("no visits in the run's stages or fewer than 2 evaluations: no visits to measure")
        return out
    group = group_of(ds, ranges)
    curves = group_curves(summary, group, n_groups)
    out["curves"] = curves
    rank = ds["rank"].values
    out["groups"] = [{"group": g, "n_individuals": int((group == g).sum()),
                      "ranks": [int(rank[group == g].min()), int(rank[group == g].max())] if (group == g).any() else None}
                     for g in range(n_groups)]
    stages = info.stages
    out["bounds"] = [int(st["start"]) for st in stages] + [int(stages[-1]["end"])]
    last = float(ds["step"].values[-1])
    for v, (stage, g) in enumerate(zip(stages, groups)):
        start, end = float(stage["start"]), float(stage["end"])
        if g is None or end <= start or start >= last:
            continue
        steps, acc = _finite(curves["accuracy"].sel(group=g))
        others = [k for k in range(n_groups) if k != g]
        row = {"visit": v, "group": g, "repeat": groups[:v].count(g), "start": start, "end": end,
               "accuracy_start": [_at(curves, k, start) for k in range(n_groups)],
               "accuracy_end": [_at(curves, k, end) for k in range(n_groups)],
               "learn_steps": _half_way(steps, acc, start, end, rising=True),
               "forget_steps": None, "others_drop": None}
        following = next((float(stages[w]["start"]) for w in range(v + 1, len(stages)) if groups[w] == g), last)
        if following > end:
            row["forget_steps"] = _half_way(steps, acc, end, min(following, last), rising=False)
        if others:
            row["others_drop"] = float(np.mean([row["accuracy_start"][k] - row["accuracy_end"][k] for k in others]))
        inside = int(((steps > start) & (steps <= end)).sum())
        if inside < 3:
            out["notes"].append(f"visit {v}: {inside} evaluations inside it, so its learning time is coarse")
        out["visits"].append(row)
    for key in ("learn_steps", "forget_steps"):
        values = [r[key] for r in out["visits"] if r[key] is not None]
        out[f"median_{key}"] = float(np.median(values)) if values else None
    return out


def _finite(curve: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(curve.values)
    return curve["step"].values[keep].astype(float), curve.values[keep]


def _at(curves: xr.Dataset, g: int, t: float) -> float | None:
    steps, acc = _finite(curves["accuracy"].sel(group=g))
    return float(np.interp(t, steps, acc)) if len(steps) else None


def _half_way(steps: np.ndarray, acc: np.ndarray, start: float, end: float, rising: bool) -> float | None:
    """Steps after ``start`` until the accuracy has moved half-way from its value at ``start``
    to its value at ``end`` (up if ``rising``, down otherwise); None if it does not move that way."""
    inside = (steps > start) & (steps < end)
    t = np.concatenate([[start], steps[inside], [end]])
    y = np.interp(t, steps, acc)
    change = (y[-1] - y[0]) if rising else (y[0] - y[-1])
    if not change > 0:
        return None
    sign = -1.0 if rising else 1.0  # a rise is a fall of -accuracy
    crossing = first_crossing(t, sign * y[None], np.array([sign * (y[0] + (y[-1] - y[0]) / 2)]))[0]
    return float(crossing - start)
