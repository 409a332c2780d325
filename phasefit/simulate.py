"""A simulator of fact-learning runs with known phases, in the store's schema.

``simulate(...)`` returns an ``xarray.Dataset`` laid out exactly like ``logstore.open_run``
(docs/logstore.md, schema_version 1), with the attributes the trainer writes (stages,
conditions, condition_label) for the configuration it records, so detectors, benchmarks and
report pages can be exercised without a trainer. A test that changes that configuration
after the fact sets it with ``set_config``, which keeps those attributes in step. The ground
truth travels with it: ``ds.attrs["simulation"]`` (JSON: the parameters and the true t1, t2,
t3, plateau length and hallucination onset, in training steps) and the simulator-only
variable ``true_acquisition(individual, attribute)`` (the step at which each fact becomes and
stays correct; NaN when never, and outside the train split).

The expected population loss is piecewise linear in log(step) with corners at the true
boundaries:

- phase 1, 0..t1: every fact's loss falls linearly in log(1 + step) from ``initial_loss`` above
  its attribute's baseline B_a to B_a (the marginals are learned at t1);
- the plateau, t1..t2: loss at B_a, accuracy near zero;
- knowledge emergence, t2..t3: each fact is acquired at its own step, log-uniformly spread over
  [t2, t3] (a rank-coupled copula makes frequent individuals earlier when ``rank_effect`` >
  0); a ``final_accuracy`` share of the facts is ever acquired; an acquired fact's loss falls
  linearly in log(step) from B_a to ``final_loss`` over ``fact_width`` (log-step units)
  centred on its acquisition, where it turns correct; the corners at t2 and t3 are thereby
  rounded over fact_width, t2 and t3 being where the straight pieces meet;
- saturation, t3..end: the acquired facts sit at ``final_loss``.

Held-out individuals follow phase 1 and then, from ``hallucination_onset``, their loss rises
above B_a linearly in log(step), reaching ``(1 + hallucination) * B_a`` at t3: over-confidence.
Noise: each fact's loss is multiplied by a mean-one log-normal factor (``fact_noise``) and the
whole step by ``1 + noise * z`` (training noise shared by every fact, which a bootstrap over
individuals cannot see). Before acquisition a fact is correct by chance with probability
``flicker``, so "first evaluation after which it stays correct" is exercised.

The messiness of real runs, each off by default (so that the detectors' own model is not all
they are tested on): ``noise_ar``, the lag-one autocorrelation of the shared step noise z
(from one evaluation to the next); ``noise_timescale``, instead, z as one path over training
steps (an AR(1) from step to step with correlation exp(-1 / noise_timescale), drawn from the
seed alone), read at the evaluation steps, so that one seed evaluated on different grids is
the same run, as a trained model's noise belongs to its trajectory and not to its grid;
``drift``, a plateau that is not flat: the trained facts' loss sinks linearly in log-step from
B_a at t1 to (1 - drift) B_a at t2, where knowledge emerges from there; ``spikes``, (step,
factor) pairs that multiply the whole evaluation nearest that step (a loss spike);
``individual_effect``, the share of the acquisition copula's variance that an individual's
six facts share (facts of one individual learned together); ``seed_spread``, the relative
spread of a run's true t2 and t3 around the values given (the condition's), drawn from the
seed, so that seeds of one condition differ by a known amount (``truth(ds)["condition"]``
keeps the condition's values, the other entries are the run's own); ``alpha_valley``, a
plateau whose length depends on the sampling exponent alpha through a stated valley (shortest
at its alpha0), so that a wrong best alpha can be seen.
"""

from __future__ import annotations

import json

import numpy as np
import xarray as xr
from scipy.special import ndtr

from logstore.schema import ATTR_CONDITION_LABEL, ATTR_CONDITIONS, ATTR_STAGES, ATTRIBUTES, SCHEMA_VERSION
from phasefit.runs import trainer_attributes

# Number of possible values per attribute; the baseline is log of it (uniform values).
N_VALUES = {"birth_date": 31 * 12 * 201, "birth_city": 800, "university": 200, "major": 100,
            "company": 500, "current_city": 800}


def evaluation_steps(n_steps: int, n_evals: int, log_fraction: float = 0.3) -> np.ndarray:
    """Evaluation steps: step 0, a log-spaced share up to n_steps / 10, then linear to n_steps."""
    switch = max(n_steps / 10, 2.0)
    n_log = max(int(round(n_evals * log_fraction)), 2)
    log_part = np.unique(np.round(np.geomspace(1, switch, n_log - 1)))  # fewer where steps are few
    n_lin = max(n_evals - 1 - len(log_part), 1)
    lin_part = np.linspace(log_part[-1], n_steps, n_lin + 1)[1:]
    return np.unique(np.round(np.concatenate([[0], log_part, lin_part])).astype(np.int64))


def _ramp(log_step: np.ndarray, start: np.ndarray, width: float) -> np.ndarray:
    """0 before ``start``, 1 after ``start + width``, linear between (log-step units)."""
    if width <= 0:
        return (log_step >= start).astype(np.float32)
    return np.clip((log_step - start) / width, 0.0, 1.0).astype(np.float32)


def simulate(
    n_individuals: int = 1000,
    n_heldout: int = 250,
    n_steps: int = 16_000,
    n_evals: int = 200,
    t1: float | None = None,
    t2: float | None = None,
    t3: float | None = None,
    final_accuracy: float = 0.9,
    initial_loss: float = 10.0,
    final_loss: float = 0.1,
    fact_width: float = 0.05,
    noise: float = 0.002,
    fact_noise: float = 0.3,
    flicker: float = 0.01,
    alpha: float = 0.0,
    rank_effect: float = 0.0,
    hallucination: float = 0.3,
    hallucination_onset: float | None = None,
    eval_subset: int = 0,
    n_full: int = 24,
    batch_size: int = 128,
    n_layers: int = 2,
    n_heads: int = 4,
    seed: int = 0,
    sampling_kind: str | None = None,
    status: str = "complete",
    noise_ar: float = 0.0,
    noise_timescale: float | None = None,
    drift: float = 0.0,
    spikes: tuple = (),
    individual_effect: float = 0.0,
    seed_spread: float = 0.0,
    alpha_valley: tuple = (),
) -> xr.Dataset:
    """Simulate one run's evaluation records; return a Dataset in the store's schema.

    Boundaries are training steps; None picks t1 = 2%, t2 = 25%, t3 = 65% of ``n_steps`` and
    the hallucination onset at t2. ``eval_subset`` > 0 evaluates only that many individuals
    per split at most steps (rank-stratified for the train split, as the trainer does), and
    everyone at ``n_full`` evenly spread steps, including the last. ``alpha`` sets the
    sampling law p(i) ~ (rank + 1) ** -alpha that drives the exposures; ``alpha_valley`` =
    (alpha0, k_below, k_above[, power]) makes it drive the timing too: the plateau t2 - t1 is
    the one given at alpha0, lengthened by exp(k |alpha - alpha0|^power) away from it (power 2
    by default; k_below below alpha0, k_above above), t3 moving with t2.
    """
    rng = np.random.default_rng(seed)
    t1 = 0.02 * n_steps if t1 is None else float(t1)
    t2 = 0.25 * n_steps if t2 is None else float(t2)
    t3 = 0.65 * n_steps if t3 is None else float(t3)
    if alpha_valley:  # the condition's plateau: shortest at alpha0, longer on either side
        alpha0, k_below, k_above, power = (*alpha_valley, 2.0)[:4]
        longer = t1 + (t2 - t1) * np.exp((k_below if alpha < alpha0 else k_above) * abs(alpha - alpha0) ** power)
        t2, t3 = longer, t3 * longer / t2
    onset = t2 if hallucination_onset is None else float(hallucination_onset)
    condition = {"t1": t1, "t2": t2, "t3": t3, "plateau_length": t2 - t1, "hallucination_onset": onset}
    if seed_spread:  # this seed's run: its plateau ends earlier or later than the condition's
        shift = float(np.exp(seed_spread * np.random.default_rng([seed, 7]).standard_normal()))
        t2, t3, onset = t2 * shift, t3 * shift, onset * shift
    steps = evaluation_steps(n_steps, n_evals)
    n_t, n_a = len(steps), len(ATTRIBUTES)
    log_t = np.log(np.maximum(steps, 1)).astype(np.float32)
    baseline = np.log([N_VALUES[a] for a in ATTRIBUTES])
    n_total = n_individuals + n_heldout
    is_train = np.arange(n_total) < n_individuals
    rank = np.where(is_train, np.arange(n_total), -1)

    # Acquisition: a log-uniform quantile u per fact, rank-coupled through a Gaussian copula.
    z_rank = _normal_quantiles(n_individuals)
    own = np.sqrt(individual_effect) * rng.standard_normal((n_individuals, 1)) if individual_effect else 0.0
    z = (rank_effect * z_rank[:, None] + own
         + np.sqrt(max(1 - rank_effect**2 - individual_effect, 0.0)) * rng.standard_normal((n_individuals, n_a)))
    u = ndtr(z)
    acquired = u < final_accuracy
    # Falls start log-uniformly on [t2, t3] shifted back by half a fall, so the expected curve
    # is a broken line with corners at t2 and t3, rounded over fact_width.
    span = np.log(t3) - np.log(t2)
    log_acq = np.where(acquired, np.log(t2) - fact_width / 2 + u / max(final_accuracy, 1e-12) * span, np.inf)
    true_acq = np.full((n_total, n_a), np.nan)  # a fact turns correct half-way down its fall
    true_acq[:n_individuals] = np.where(acquired, np.exp(log_acq + fact_width / 2), np.nan)

    # Phase 1 (common to every fact) and the held-out over-confidence, per step.
    phase1 = np.clip(1 - np.log1p(steps) / np.log1p(t1), 0, 1).astype(np.float32)
    halluc = np.clip((np.log(np.maximum(steps, 1)) - np.log(onset)) / (np.log(t3) - np.log(onset)), 0, 1)
    sink = drift * _plateau_share(steps, t1, t2)  # the plateau's drift below B, as a share of B
    if noise_timescale:  # one path over training steps, whatever the grid reads of it
        path = _ar1(np.random.default_rng([seed, 11]), n_steps + 1, float(np.exp(-1 / noise_timescale)))
        step_factor = 1 + noise * path[steps]
    else:
        step_factor = 1 + noise * _ar1(rng, n_t, noise_ar)
    for at, factor in spikes:
        step_factor[int(np.argmin(np.abs(steps - at)))] *= factor

    # Which individuals are evaluated at which step.
    evaluated = np.ones((n_t, n_total), dtype=bool)
    if eval_subset and eval_subset < n_total:
        full = np.unique(np.round(np.linspace(0, n_t - 1, max(n_full, 1))).astype(int))
        subset = np.zeros(n_total, dtype=bool)
        subset[np.unique(np.round(np.linspace(0, n_individuals - 1, min(eval_subset, n_individuals))).astype(int))] = True
        held = np.flatnonzero(~is_train)
        subset[rng.choice(held, size=min(eval_subset, len(held)), replace=False)] = True
        evaluated[:] = subset
        evaluated[full] = True

    loss = np.empty((n_t, n_total, n_a), dtype=np.float32)
    correct = np.empty((n_t, n_total, n_a), dtype=bool)
    top_prob = np.empty((n_t, n_total, n_a), dtype=np.float32)
    entropy = np.empty((n_t, n_total, n_a), dtype=np.float32)
    b = baseline.astype(np.float32)
    log_acq32 = log_acq.astype(np.float32)
    sigma = np.float32(fact_noise)
    for k in range(n_t):  # one step at a time keeps memory at paper scale bounded
        known = _ramp(log_t[k], log_acq32, fact_width)  # (train, attribute) in [0, 1]
        level = np.empty((n_total, n_a), dtype=np.float32)
        plateau = b * np.float32(1 - sink[k])
        level[:n_individuals] = plateau + (final_loss - plateau) * known
        level[n_individuals:] = b * (1 + hallucination * halluc[k])
        level += initial_loss * phase1[k]
        factor = np.exp(sigma * rng.standard_normal((n_total, n_a), dtype=np.float32) - sigma**2 / 2)
        loss[k] = level * factor * np.float32(step_factor[k])
        is_correct = rng.random((n_total, n_a), dtype=np.float32) < flicker
        is_correct[:n_individuals] |= log_t[k] >= log_acq32 + np.float32(fact_width / 2)
        is_correct[n_individuals:] = False
        correct[k] = is_correct
        # First-token confidence: the marginal on the plateau, sharp once known; held-out
        # individuals gain some (misplaced) confidence as hallucination sets in.
        confidence = np.empty((n_total, n_a), dtype=np.float32)
        confidence[:n_individuals] = known
        confidence[n_individuals:] = 0.5 * halluc[k]
        jitter = 0.05 * rng.standard_normal((n_total, n_a), dtype=np.float32)
        top_prob[k] = np.clip(0.05 + 0.9 * confidence + jitter, 0.0, 1.0)
        entropy[k] = np.maximum(3.0 * (1 - 0.9 * confidence) + jitter, 0.0)
        loss[k][~evaluated[k]] = np.nan
        correct[k][~evaluated[k]] = False
        top_prob[k][~evaluated[k]] = np.nan
        entropy[k][~evaluated[k]] = np.nan

    # Exposures: biographies drawn with p(i) ~ (rank + 1) ** -alpha, batch_size per step.
    p = np.where(is_train, np.where(is_train, rank + 1.0, 1.0) ** -alpha, 0.0)
    p /= p.sum()
    increments = rng.poisson(np.diff(steps, prepend=0)[:, None] * batch_size * p[None, :])
    exposures = np.cumsum(increments, axis=0).astype(np.int32)

    train_step = np.arange(0, n_steps, max(n_steps // 1000, 1), dtype=np.int64)
    mean_curve = np.interp(train_step, steps, np.nanmean(loss[:, :n_individuals].reshape(n_t, -1), axis=1))
    lr = 4e-4 * 0.5 * (1 + np.cos(np.pi * train_step / n_steps))
    sharp = 1 / (1 + np.exp(-(log_t - np.log(t2)) * 4))  # attention sharpens as the plateau ends
    heads = np.linspace(0.5, 1.0, n_layers * n_heads).reshape(n_layers, n_heads)
    attn = (sharp[:, None, None] * heads[None]).astype(np.float32)

    truth = {"t1": t1, "t2": t2, "t3": t3, "plateau_length": t2 - t1,
             "hallucination_onset": onset, "final_accuracy": final_accuracy,
             "baseline": float(baseline.mean()), "condition": condition}
    params = dict(n_individuals=n_individuals, n_heldout=n_heldout, n_steps=n_steps, n_evals=n_evals,
                  final_accuracy=final_accuracy, initial_loss=initial_loss, final_loss=final_loss,
                  fact_width=fact_width, noise=noise, fact_noise=fact_noise, flicker=flicker,
                  alpha=alpha, rank_effect=rank_effect, hallucination=hallucination,
                  eval_subset=eval_subset, n_full=n_full, seed=seed, noise_ar=noise_ar,
                  noise_timescale=noise_timescale, drift=drift,
                  spikes=[list(x) for x in spikes], individual_effect=individual_effect, seed_spread=seed_spread,
                  alpha_valley=list(alpha_valley))
    kind = sampling_kind or ("power_law" if alpha > 0 else "uniform")
    config = {"seed": seed, "name": f"sim-N{n_individuals}-a{alpha:g}-s{seed}",
              "world": {"n_individuals": n_individuals, "n_heldout": n_heldout, "n_finetune": 0},
              "sampling": {"kind": kind, "alpha": alpha},
              "model": {"preset": "simulated", "n_layers": n_layers, "n_heads": n_heads},
              "train": {"steps": n_steps, "batch_size": batch_size, "lr": 4e-4},
              "eval": {"n_evals": n_evals, "subset": eval_subset, "n_full": n_full}}
    split = np.where(is_train, "train", "heldout")
    dims3 = ("step", "individual", "attribute")
    ds = xr.Dataset(
        {
            "loss": (dims3, loss),
            "correct": (dims3, correct),
            "top_prob": (dims3, top_prob),
            "entropy": (dims3, entropy),
            "exposures": (("step", "individual"), exposures),
            "baseline": (("attribute",), baseline),
            "train_loss": (("train_step",), (mean_curve / 3).astype(np.float32)),
            "lr": (("train_step",), lr.astype(np.float32)),
            "attn_name_to_name": (("step", "layer", "head"), attn),
            "attn_value_to_name": (("step", "layer", "head"), 0.8 * attn),
            "attn_sharpness": (("step", "layer", "head"), 1 - 0.5 * attn),
            "true_acquisition": (("individual", "attribute"), true_acq),
        },
        coords={
            "step": steps,
            "individual": np.arange(n_total, dtype=np.int64),
            "attribute": list(ATTRIBUTES),
            "split": ("individual", split),
            "rank": ("individual", rank.astype(np.int64)),
            "train_step": train_step,
        },
        attrs={
            "schema_version": SCHEMA_VERSION,
            "status": status,
            "committed_steps": n_t,
            "package_version": "simulated",
            "simulation": json.dumps({"params": params, "truth": truth}, sort_keys=True),
        },
    )
    set_config(ds, config)
    return ds


TRAINER_ATTRIBUTES = (ATTR_STAGES, ATTR_CONDITIONS, ATTR_CONDITION_LABEL)


def set_config(ds: xr.Dataset, config: dict) -> xr.Dataset:
    """Record ``config`` as the simulated run's configuration, with the stages, conditions and
    condition label a trainer would write for it (in place; returns ``ds``)."""
    ds.attrs["config"] = json.dumps(config, sort_keys=True)
    ds.attrs.update(trainer_attributes(config, int((ds["split"].values == "train").sum())))
    return ds


def _plateau_share(steps: np.ndarray, t1: float, t2: float) -> np.ndarray:
    """0 up to t1, 1 from t2 on, linear in log(step) between: how far a drift has gone."""
    x = np.log(np.maximum(steps, 1).astype(float))
    return np.clip((x - np.log(t1)) / (np.log(t2) - np.log(t1)), 0.0, 1.0)


def _ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    """n steps of a stationary AR(1) series with unit variance and lag-one correlation ``phi``."""
    e = rng.standard_normal(n)
    if not phi:
        return e
    z = np.empty(n)
    z[0] = e[0]
    for k in range(1, n):
        z[k] = phi * z[k - 1] + np.sqrt(1 - phi**2) * e[k]
    return z


def _normal_quantiles(n: int) -> np.ndarray:
    """Standard-normal quantiles of n evenly spaced ranks, most frequent (rank 0) lowest."""
    from scipy.special import ndtri

    return ndtri((np.arange(n) + 0.5) / n)


def truth(ds: xr.Dataset) -> dict:
    """The true boundaries of a simulated run (training steps), from ``ds.attrs``."""
    return json.loads(ds.attrs["simulation"])["truth"]


def to_store(ds: xr.Dataset, run_dir, status: str | None = None, committed: int | None = None, fsync: bool = False):
    """Write a simulated run to ``run_dir/metrics.zarr`` with ``logstore.RunWriter``.

    ``status`` defaults to the Dataset's; "running" (with ``committed`` rows, default all)
    leaves the store as a live run looks to readers. Returns the run directory.
    """
    import warnings
    from pathlib import Path

    import zarr

    from logstore import STORE_NAME, RunWriter

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    status = status or ds.attrs.get("status", "complete")
    writer = RunWriter.create(run_dir / STORE_NAME, individual=ds["individual"].values, split=ds["split"].values,
                              rank=ds["rank"].values, baseline=ds["baseline"].values, n_layers=ds.sizes["layer"],
                              n_heads=ds.sizes["head"], config=ds.attrs["config"], package_version="simulated",
                              attributes={k: ds.attrs[k] for k in TRAINER_ATTRIBUTES if k in ds.attrs}, fsync=fsync)
    names = ("loss", "correct", "top_prob", "entropy", "exposures", "attn_name_to_name", "attn_value_to_name",
             "attn_sharpness")
    for k, step in enumerate(ds["step"].values):
        writer.append_eval(int(step), **{n: ds[n].values[k] for n in names})
    writer.append_train(ds["train_step"].values, ds["train_loss"].values, ds["lr"].values)
    writer.close("failed" if status == "failed" else "complete", reason="simulated failure" if status == "failed" else "")
    if status == "running" or committed is not None:
        group = zarr.open_group(run_dir / STORE_NAME, mode="r+", zarr_format=3)
        attrs = group.attrs.asdict()
        attrs.update(status=status, committed_steps=int(ds.sizes["step"] if committed is None else committed))
        group.attrs.put(attrs)
        with warnings.catch_warnings():  # zarr: consolidated metadata is not in the v3 spec yet
            warnings.filterwarnings("ignore", message="Consolidated metadata")
            zarr.consolidate_metadata(group.store)
    return run_dir


def expected_curve(ds: xr.Dataset, split: str = "train", steps=None):
    """The noise-free, infinite-population loss curve of a simulated run, as a ``Curve``.

    What the population curve of ``ds`` estimates: a detector applied to it gives the
    quantity a bootstrap interval from ``ds`` should cover. ``steps`` default to the run's.
    """
    from phasefit.curve import Curve

    sim = json.loads(ds.attrs["simulation"])
    p, truth_ = sim["params"], sim["truth"]
    steps = ds["step"].values if steps is None else np.asarray(steps)
    base = float(np.mean(ds["baseline"].values))
    x = np.log(np.maximum(steps, 1).astype(float))
    phase1 = np.clip(1 - np.log1p(steps) / np.log1p(truth_["t1"]), 0, 1)
    w, fa = p["fact_width"], p["final_accuracy"]
    if split == "train":
        start = np.log(truth_["t2"]) - w / 2 + (np.arange(4000) + 0.5) / 4000 * (np.log(truth_["t3"]) - np.log(truth_["t2"]))
        known = fa * np.mean(_ramp(x[:, None], start[None, :], w), axis=1)
        plateau = base * (1 - p.get("drift", 0.0) * _plateau_share(steps, truth_["t1"], truth_["t2"]))
        loss = plateau + p["initial_loss"] * phase1 + (p["final_loss"] - plateau) * known
    else:
        onset = truth_["hallucination_onset"]
        rise = np.clip((x - np.log(onset)) / (np.log(truth_["t3"]) - np.log(onset)), 0, 1)
        loss = base * (1 + p["hallucination"] * rise) + p["initial_loss"] * phase1
    return Curve(steps.astype(float), loss.astype(float), base, None, float(p["n_steps"]))
