"""``detect``: a run's (or a curve's) measured phases, with confidence intervals.

From a store Dataset: population curves, the boundaries t1, t2, t3 by the chosen detector,
bootstrap intervals over individuals for every boundary, the plateau length and the final
accuracy, per-fact acquisition with decile summaries, and the hallucination onset with its
own interval (over held-out individuals). From a plain curve (DataArray, Series or
``Curve``) with its baseline: the boundaries only, since there are no individuals to resample.
The intervention measures (fine-tuning, patching, sequential groups) build on this:
``phasefit.analysis.analyse``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import xarray as xr
from scipy.ndimage import median_filter

from phasefit import bootstrap, facts
from phasefit.curve import Curve, estimate_noise
from phasefit.detectors import make_detector
from phasefit.detectors.base import Detector
from phasefit.hallucination import confidence_gap, onset, onsets
from phasefit.rules import BOUNDARIES, T2_TOLS
from phasefit.runs import RunInfo, open_run, run_info
from phasefit.summary import Summary, chance_accuracy, population_curves, split_curve, summarise

MIN_EVALUATIONS = 3  # fewer finite evaluations cannot show phases
# What one run's intervals resample: its individuals and its step-to-step noise, not the seed.
ONE_SEED = "one seed: individuals and step-to-step training noise resampled (not seed-to-seed spread)"
FROM_TRAINED = "its trained individuals are known from step 0, so their curve has no phases (t1, t2, t3)"


@dataclass
class Phases:
    """Measured phases of one run or curve. Steps are training steps, losses nats.

    Missing values are None, with the reason in ``notes``. Intervals are [low, high]
    percentile bootstrap intervals over individuals (``diagnostics["level"]``, default 95%).
    The fields after ``notes`` are large and stay in Python (not in ``to_dict``).
    """

    run: str
    status: str = "complete"  # complete | running | failed
    method: str = "auto"
    t1: float | None = None  # marginals learned: the loss reaches the baseline
    t2: float | None = None  # plateau end: the loss leaves the baseline downwards for good
    t3: float | None = None  # knowledge saturated: the loss reaches its final level
    plateau_length: float | None = None  # t2 - t1
    t1_ci: list | None = None
    t2_ci: list | None = None
    t3_ci: list | None = None
    plateau_ci: list | None = None
    ci_kind: str | None = None  # what the intervals resample (ONE_SEED for one run's); None: no intervals
    final_accuracy: float | None = None  # train split, last evaluation
    final_accuracy_ci: list | None = None
    final_loss: float | None = None
    baseline: float | None = None
    chance_accuracy: float | None = None  # no-knowledge accuracy, mean over attributes
    hallucination_onset: float | None = None  # held-out loss above the baseline for good
    hallucination_onset_ci: list | None = None
    hallucination_lag: float | None = None  # onset - t2
    hallucination_lag_ci: list | None = None  # paired: each replicate's onset - its t2
    top_prob_gap: float | None = None  # held-out minus train mean top-token probability, last evaluation
    n_steps: float | None = None  # the run's planned training steps
    last_step: float | None = None  # last committed evaluation
    complete: bool = True
    conditions: dict = field(default_factory=dict)  # N, sampling, alpha, lr, ..., seed
    condition_label: str | None = None  # the sampling condition in words ("power law alpha=0.7")
    config: dict = field(default_factory=dict)  # the run's resolved configuration
    sources: dict = field(default_factory=dict)  # boundary -> detector that supplied it
    estimates: dict = field(default_factory=dict)  # detector -> {t1, t2, t3}
    diagnostics: dict = field(default_factory=dict)
    acquisition_by_decile: list = field(default_factory=list)
    acquisition_by_attribute: list = field(default_factory=list)
    t2_by_t2_tol: list = field(default_factory=list)  # {t2_tol, t2, plateau_length}: the threshold rules at T2_TOLS
    # Filled by phasefit.analyse (None otherwise and for other runs):
    finetune: dict | None = None  # fine-tuning runs: interventions.finetune_effects
    patching: dict | None = None  # patched runs: interventions.patching_effect
    sequential: dict | None = None  # sequential runs: interventions.sequential_groups (without curves)
    notes: list = field(default_factory=list)
    # Python-only results
    curve: Curve | None = field(default=None, repr=False)
    curves: xr.Dataset | None = field(default=None, repr=False)  # (step, split, attribute)
    acquisition: xr.Dataset | None = field(default=None, repr=False)  # (individual, attribute)
    acquired_fraction: xr.DataArray | None = field(default=None, repr=False)  # (step, decile)
    gap: xr.Dataset | None = field(default=None, repr=False)  # (step): held-out vs train confidence
    replicates: xr.DataArray | None = field(default=None, repr=False)  # (replicate, boundary)
    reference: "Phases | None" = field(default=None, repr=False)  # a patched run's reference run
    groups: xr.Dataset | None = field(default=None, repr=False)  # sequential runs: (step, group) accuracy, loss

    LARGE = ("curve", "curves", "acquisition", "acquired_fraction", "gap", "replicates", "reference", "groups")

    def to_dict(self) -> dict:
        """JSON-able dict: the fields of ``phasefit detect --json`` and the small diagnostics."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self) if f.name not in self.LARGE}

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def __repr__(self) -> str:
        """The measurements with their intervals, in one line (every field: ``to_dict()``)."""
        def show(name: str, value, interval, digits: int = 0) -> str:
            if value is None:
                return f"{name}=None"
            ci = "" if interval is None else f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"
            return f"{name}={value:.{digits}f}{ci}"

        parts = [f"run={self.run!r}", f"status={self.status!r}", show("t1", self.t1, self.t1_ci),
                 show("t2", self.t2, self.t2_ci), show("plateau_length", self.plateau_length, self.plateau_ci),
                 show("t3", self.t3, self.t3_ci), show("final_accuracy", self.final_accuracy, self.final_accuracy_ci, 3),
                 show("hallucination_onset", self.hallucination_onset, self.hallucination_onset_ci),
                 f"notes={len(self.notes)}"]
        return f"Phases({', '.join(parts)})"


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(value) else round(float(value), 6)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _ci(values: np.ndarray, exists: bool, level: float) -> list | None:
    interval = bootstrap.percentile_interval(values, level) if exists else None
    return None if interval is None else [interval[0], interval[1]]


def detect(data, method: str | Detector = "auto", *, baseline: float | None = None, n_boot: int = 200,
           level: float = 0.95, seed: int = 0, run: str | None = None, per_fact: bool = True,
           hallucination_tol: float = 0.02, **params) -> Phases:
    """Measure the phases of a run or of a plain loss curve.

    ``data``: a store Dataset (``logstore.open_run`` or ``phasefit.simulate``), a run folder,
    or a loss curve (``xarray.DataArray`` over ``step``, ``pandas.Series`` indexed by step, or
    ``Curve``) whose ``baseline`` (nats) must then be given. ``method``: ``auto`` (default),
    ``threshold``, ``changepoint``, ``fit`` or a Detector; ``params`` go to its constructor.
    ``n_boot`` bootstrap replicates over individuals give the ``level`` intervals (0: none);
    ``per_fact`` adds acquisition steps and their summaries; ``hallucination_tol`` is the
    band above the baseline the held-out loss must leave for good (default 2%). ``run``
    names the result (default: the run's folder, else its config's ``name``). A run that
    starts from a trained model (``train.init_from``) has no phases: its trained individuals
    are known from step 0. Definitions and defaults: docs/phasefit.md.
    """
    if isinstance(data, (str, Path)):
        data = open_run(data)
    if not isinstance(data, xr.Dataset):
        curve = data if isinstance(data, Curve) else Curve.from_series(data, baseline)
        return _detect_curve(curve, method, run or getattr(data, "name", None) or "curve", params)
    phases, _ = detect_run(data, run_info(data, run), method, n_boot=n_boot, level=level, seed=seed,
                           per_fact=per_fact, hallucination_tol=hallucination_tol, **params)
    return phases


def _boundaries_into(phases: Phases, detector: Detector) -> None:
    found = detector.boundaries_
    phases.t1, phases.t2, phases.t3 = found.t1, found.t2, found.t3
    phases.plateau_length = found.plateau_length
    phases.notes.extend(found.notes)
    phases.sources = getattr(detector, "sources_", {k: detector.name for k in BOUNDARIES if getattr(found, k) is not None})
    members = getattr(detector, "estimates_", {detector.name: found})
    phases.estimates = {name: {k: getattr(b, k) for k in BOUNDARIES} for name, b in members.items()}
    phases.diagnostics["detectors"] = found.diagnostics if hasattr(detector, "estimates_") else {detector.name: found.diagnostics}
    if phases.curve is not None:  # how far t2 depends on the rule's band (crossrun refits b at each)
        for tol in T2_TOLS:
            b = make_detector("threshold", t2_tol=tol).fit(phases.curve).boundaries_
            phases.t2_by_t2_tol.append({"t2_tol": tol, "t2": b.t2, "plateau_length": b.plateau_length})
    if phases.plateau_length is not None and phases.curve is not None:
        if phases.plateau_length < 0.01 * phases.curve.run_length:
            phases.notes.append(f"no plateau: the loss left the baseline {phases.plateau_length:.0f} steps after "
                                f"reaching it (under 1% of the run)")


def _detect_curve(curve: Curve, method, run: str, params: dict) -> Phases:
    phases = Phases(run=run, method=getattr(method, "name", method), baseline=curve.baseline, curve=curve,
                    n_steps=curve.run_length if len(curve.step) else None)
    if len(curve.step) < 3:
        phases.notes.append(f"only {len(curve.step)} evaluation steps with a finite loss: too few to find phases")
        return phases
    phases.last_step = float(curve.step[-1])
    phases.final_loss = float(curve.loss[-1])
    if curve.accuracy is not None and np.isfinite(curve.accuracy[-1]):
        phases.final_accuracy = float(curve.accuracy[-1])
    _boundaries_into(phases, make_detector(method, **params).fit(curve))
    phases.notes.append("a plain curve has no individuals to resample: no confidence intervals")
    return phases


def detect_run(ds: xr.Dataset, info: RunInfo, method: str | Detector = "auto", *, n_boot: int = 200,
               level: float = 0.95, seed: int = 0, per_fact: bool = True, hallucination_tol: float = 0.02,
               **params) -> tuple[Phases, Summary | None]:
    """``detect`` of a store Dataset whose attributes were read (``run_info``), and the
    ``Summary`` of its records the phases were measured from, for measures that build on it
    (``analyse``); None when the run has too little to measure (the notes say why)."""
    baseline = float(np.mean(np.asarray(ds["baseline"].values, dtype=float))) if "baseline" in ds else None
    phases = Phases(run=info.name, status=info.status, method=getattr(method, "name", method), baseline=baseline,
                    chance_accuracy=chance_accuracy(ds),
                    n_steps=info.n_steps, complete=info.status == "complete", conditions=dict(info.conditions),
                    condition_label=info.condition_label, config=info.config)
    n_eval = ds.sizes.get("step", 0)
    if n_eval == 0 or ds.sizes.get("individual", 0) == 0:
        phases.notes.append("no committed evaluation steps" if n_eval == 0 else "no individuals in the store")
        return phases, None
    phases.last_step = float(ds["step"].values[-1])
    if info.status == "running":
        phases.notes.append(f"incomplete: still running, analysed on its {n_eval} committed evaluations "
                            f"(to step {phases.last_step:.0f} of {phases.n_steps or 0:.0f})")
    elif info.status == "failed":
        phases.notes.append(f"run failed: analysed on its {n_eval} committed evaluations (to step {phases.last_step:.0f})")

    summary = summarise(ds)
    phases.curves = population_curves(summary)
    curve = split_curve(ds, phases.curves)
    phases.curve = curve
    if len(curve.step) < MIN_EVALUATIONS:
        phases.notes.append("train loss is NaN at every evaluation" if len(curve.step) == 0 else
                            f"only {len(curve.step)} evaluations with a finite train loss: too few to find phases")
        return phases, None
    dropped = int(np.sum(phases.curves["step"].values <= curve.step[-1])) - len(curve.step)
    if dropped > 0:
        phases.notes.append(f"{dropped} evaluations had no finite train loss and were skipped")
    phases.final_loss = float(curve.loss[-1])
    phases.final_accuracy = float(curve.accuracy[-1]) if np.isfinite(curve.accuracy[-1]) else None

    rng = np.random.default_rng(seed)
    noise = None  # the replicates' draws of step noise, shared with the held-out onset's
    if info.init_from:
        phases.diagnostics.update(n_boot=n_boot, level=level)
        phases.notes.append(f"started from a trained model ({info.init_from}): {FROM_TRAINED}")
    else:
        detector = make_detector(method, **params).fit(curve)
        _boundaries_into(phases, detector)
        noise = _intervals(phases, detector, summary, curve, n_boot, rng, level)
    phases.diagnostics.update({f"resolution_at_{k}": _resolution(curve, getattr(phases, k)) for k in BOUNDARIES})
    phases.diagnostics.update(noise=estimate_noise(curve),
                              plateau_accuracy=_mean_between(curve, phases.t1, phases.t2),
                              n_train=int((ds["split"].values == "train").sum()),
                              n_heldout=int((ds["split"].values == "heldout").sum()))
    _hallucination(phases, ds, summary, n_boot, rng, level, hallucination_tol, noise)
    if per_fact and "correct" in ds:
        acq = facts.acquisition(ds, summary)
        phases.acquisition = acq
        phases.acquisition_by_decile = facts.by_decile(acq).to_dict("records")
        phases.acquisition_by_attribute = facts.by_attribute(acq).to_dict("records")
        phases.acquired_fraction = facts.acquired_fraction(acq, ds["step"].values)
    return phases, summary


def _intervals(phases: Phases, detector: Detector, summary, curve: Curve, n_boot: int, rng, level: float) -> np.ndarray:
    """Bootstrap intervals over train individuals and the run's step-to-step noise (each
    replicate curve times a block-bootstrap draw of the noise): each boundary refitted by its
    detector. The final accuracy's interval resamples individuals only."""
    reps = bootstrap.replicate_curves(summary.individual, "train", curve.step, n_boot, rng, ("loss_sum", "n_correct"))
    noise = bootstrap.training_noise(curve, (phases.t1, phases.t2, phases.t3), reps["loss_sum"], rng)
    losses = reps["loss_sum"] * noise
    members = getattr(detector, "members_", {detector.name: detector})
    table = np.full((n_boot, 3), np.nan)
    for name in sorted(set(phases.sources.values())):
        fitted = bootstrap.replicate_boundaries(members[name], curve, losses)
        for k, key in enumerate(BOUNDARIES):
            if phases.sources.get(key) == name:
                table[:, k] = fitted[:, k]
    for k, key in enumerate(BOUNDARIES):
        setattr(phases, f"{key}_ci", _ci(table[:, k], getattr(phases, key) is not None, level))
    phases.plateau_ci = _ci(table[:, 1] - table[:, 0], phases.plateau_length is not None, level)
    phases.final_accuracy_ci = _ci(reps["n_correct"][:, -1], phases.final_accuracy is not None, level)
    phases.replicates = xr.DataArray(table, dims=("replicate", "boundary"), coords={"boundary": list(BOUNDARIES)})
    defined = {key: float(np.isfinite(table[:, k]).mean()) for k, key in enumerate(BOUNDARIES)} if n_boot else {}
    phases.diagnostics.update(n_boot=n_boot, level=level, bootstrap_defined=defined)
    if n_boot == 0:
        phases.notes.append("n_boot = 0: no confidence intervals")
    else:
        phases.ci_kind = ONE_SEED
    return noise


def _hallucination(phases: Phases, ds, summary, n_boot, rng, level, tol, noise: np.ndarray | None) -> None:
    """The held-out onset and its interval (held-out individuals, and the train replicates'
    draws of step noise, ``noise``, at the same steps), and the lag onset - t2 with the
    interval of the replicate-by-replicate differences (paired by that shared noise)."""
    if "heldout" not in phases.curves["split"].values:
        phases.notes.append("no held-out individuals: no hallucination onset")
        return
    held = split_curve(ds, phases.curves, split="heldout")
    found = onset(held, tol)
    phases.hallucination_onset = found.onset
    phases.notes.extend(found.notes)
    phases.gap = confidence_gap(summary.individual)
    last = phases.gap["top_prob_gap"].dropna("step")
    phases.top_prob_gap = float(last.values[-1]) if last.size else None
    if found.onset is not None and phases.t2 is not None:
        phases.hallucination_lag = found.onset - phases.t2
    if found.onset is None or not n_boot:
        return
    reps = bootstrap.replicate_curves(summary.individual, "heldout", held.step, n_boot, rng)["loss_sum"]
    reps = np.where(np.isfinite(reps), reps, held.loss[None])
    if noise is not None:  # the step noise every fact of a step shares, train and held-out alike
        at = np.searchsorted(phases.curve.step, held.step).clip(0, len(phases.curve.step) - 1)
        same = phases.curve.step[at] == held.step
        reps = np.where(same[None], reps * noise[:, at], reps)
    if found.smooth_window > 1:  # as for the thresholds: the noise guard is kept across replicates
        reps = median_filter(reps, size=(1, found.smooth_window), mode="nearest")
    values = onsets(held, reps, tol)
    phases.hallucination_onset_ci = _ci(values, True, level)
    if phases.hallucination_lag is not None and phases.replicates is not None:
        lags = values - phases.replicates.sel(boundary="t2").values
        phases.hallucination_lag_ci = _ci(lags, True, level)


def _resolution(curve: Curve, t: float | None) -> float | None:
    """Spacing of the evaluations around step t (steps): the grid a boundary is read from."""
    if t is None or len(curve.step) < 2:
        return None
    i = int(np.clip(np.searchsorted(curve.step, t), 1, len(curve.step) - 1))
    return float(curve.step[i] - curve.step[i - 1])


def _mean_between(curve: Curve, a: float | None, b: float | None) -> float | None:
    if a is None or b is None or curve.accuracy is None:
        return None
    inside = (curve.step >= a) & (curve.step <= b)
    return float(np.nanmean(curve.accuracy[inside])) if inside.any() else None
