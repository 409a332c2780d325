"""Confidence intervals: bootstrap over individuals within a run, t intervals across seeds.

Within a run, the individuals are the sampling unit (an individual's six facts share a name
and its exposures, so they are not independent): a replicate draws the individuals of a split
with replacement, and its population curve at step t is
sum_i w_i S_i(t) / sum_i w_i C_i(t), with S the loss summed over the individual's evaluated
attributes and C their number. All replicates come from one matrix product. Each detector is
refitted on every replicate curve and the percentile interval of each boundary, and of the
plateau length t2 - t1 (paired within a replicate), is reported. This captures the sampling
of individuals and facts, not the randomness of training (initialisation, data order): for
that, runs that differ only by seed are combined with a t interval across seeds.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import xarray as xr

from phasefit.curve import Curve
from phasefit.detectors.base import Detector


@contextmanager
def single_threaded_blas():
    """Run BLAS on one thread inside the block (threadpoolctl if installed, else OpenBLAS's
    own setter when numpy bundles it; otherwise nothing changes).

    The bootstrap's products are small next to the cost of waking BLAS threads: on a 2-core
    machine shared with other work, multithreaded OpenBLAS took 0.2-1.6 s for the
    (200 x 64k) x (64k x 200) product that one thread does in 0.08 s.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        setter, getter = _openblas_thread_functions()
        if setter is None:
            yield
            return
        before = getter()
        setter(1)
        try:
            yield
        finally:
            setter(before)
        return
    with threadpool_limits(1, user_api="blas"):
        yield


@lru_cache(maxsize=1)
def _openblas_thread_functions():
    import ctypes
    import re

    try:
        with open("/proc/self/maps") as maps:
            paths = sorted(set(re.findall(r"(/\S*openblas\S*\.so\S*)", maps.read())))
        for path in paths:
            lib = ctypes.CDLL(path)
            for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", ""), ("openblas", "64_"), ("openblas", "")):
                setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                if setter is not None and getter is not None:
                    setter.argtypes, getter.restype = [ctypes.c_int], ctypes.c_int
                    return setter, getter
    except OSError:
        pass
    return None, None


def resample_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Multinomial bootstrap counts, shape (n_boot, n), as float32 for the matrix product."""
    if n_boot * n <= 1 << 22:  # small: every draw at once
        draws = rng.integers(0, n, size=(n_boot, n), dtype=np.int32) + (np.arange(n_boot, dtype=np.int32) * n)[:, None]
        return np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float32)
    counts = np.empty((n_boot, n), dtype=np.float32)
    for b in range(n_boot):  # large: one replicate at a time keeps the draws in cache
        counts[b] = np.bincount(rng.integers(0, n, size=n, dtype=np.int32), minlength=n)
    return counts


def replicate_curves(individual: xr.Dataset, split: str, steps: np.ndarray, n_boot: int,
                     rng: np.random.Generator, fields: tuple[str, ...] = ("loss_sum",)) -> dict[str, np.ndarray]:
    """Bootstrap replicates of the population means of ``split`` at ``steps``.

    ``individual`` is ``Summary.individual``; returns, per field, an array (n_boot, len(steps))
    of the resampled mean per evaluated fact (``loss_sum`` -> mean loss, ``n_correct`` ->
    accuracy, ``top_prob_sum``...).
    """
    members = np.flatnonzero(individual["split"].values == split)
    n = len(members)
    if n == 0 or n_boot == 0:
        return {f: np.full((n_boot, len(steps)), np.nan) for f in fields}
    rows = np.searchsorted(individual["step"].values, steps)
    whole = slice(None) if n == individual.sizes["individual"] else members
    weights = resample_weights(n, n_boot, rng)
    # (step, individual) @ (individual, replicate), transposed: the fastest of the equivalent
    # products, on one BLAS thread (see single_threaded_blas).
    with single_threaded_blas():
        totals = {f: (individual[f].values[rows][:, whole].astype(np.float32) @ weights.T).T
                  for f in ("n_evaluated", *fields)}
    with np.errstate(invalid="ignore", divide="ignore"):
        return {f: totals[f] / totals["n_evaluated"] for f in fields}


def replicate_boundaries(detector: Detector, curve: Curve, losses: np.ndarray) -> np.ndarray:
    """Refit ``detector`` (fitted on ``curve``) on each replicate loss (rows of ``losses``);
    returns (n_boot, 3) of t1, t2, t3 (NaN where a boundary is missing). A replicate step with
    no evaluated fact (possible only where few individuals were evaluated) takes the loss of
    the original curve there."""
    losses = np.where(np.isfinite(losses), losses, curve.loss[None])
    return detector.fit_replicates(curve, losses)


def percentile_interval(values: np.ndarray, level: float = 0.95, min_defined: float = 0.5) -> tuple[float, float] | None:
    """Percentile interval of the replicates where the quantity exists.

    None when it exists in fewer than ``min_defined`` of the replicates (the boundary itself
    is then too uncertain to bound).
    """
    values = np.asarray(values, dtype=float)
    defined = values[np.isfinite(values)]
    if len(values) == 0 or len(defined) < max(min_defined * len(values), 2):
        return None
    lo, hi = np.quantile(defined, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def seed_interval(values, level: float = 0.95) -> tuple[float, float, float] | None:
    """Mean and t interval across seeds: (mean, low, high); None with fewer than 2 values."""
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(values) < 2:
        return None
    from scipy import stats  # imported on use: scipy.stats costs about a second to import

    mean = float(values.mean())
    half = float(stats.t.ppf((1 + level) / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half



PIECE = 16  # evaluations per local cubic: short enough to follow a rounded drop, long enough to keep
# most of a correlated noise (on the simulator, pieces of 8 took half of the variance of t2 at 3% noise)


def phase_index(curve: Curve, boundaries) -> tuple[np.ndarray, bool]:
    """The phase of each evaluation (0 before the first boundary found, and so on), and whether
    any boundary was found."""
    cuts = np.log1p(sorted(t for t in boundaries if t is not None and np.isfinite(t)))
    return np.searchsorted(cuts, curve.log_step), len(cuts) > 0


def phase_residuals(curve: Curve, boundaries, values: np.ndarray | None = None) -> np.ndarray:
    """Relative residuals of the loss about cubics in log-step fitted within each phase (cut
    at ``boundaries``, the steps of t1, t2, t3 found), over pieces of at most PIECE
    evaluations, for the curve or each row of ``values`` (losses at the curve's steps): the
    run's step-to-step noise, without the corners and bends that one smooth curve would leave
    in it. A piece of 6 or 7 evaluations gets a quadratic, of 4 or 5 a line; NaN where a phase
    holds fewer than 4 (too few to tell noise from shape), and before t1 (the fall from the
    initial loss, a sigmoid of several nats).
    """
    x = curve.log_step
    y = curve.loss[None] if values is None else np.atleast_2d(values)
    phase, cut = phase_index(curve, boundaries)
    out = np.full(y.shape, np.nan)
    for k in np.unique(phase):
        if k == 0 and cut:  # the fall to t1: several nats of shape, not noise
            continue
        members = np.flatnonzero(phase == k)
        for inside in np.array_split(members, -(-len(members) // PIECE)):
            if len(inside) < 4:
                continue
            degree = 3 if len(inside) >= 8 else 2 if len(inside) >= 6 else 1
            design = np.vander(x[inside] - x[inside].mean(), degree + 1)
            coef, *_ = np.linalg.lstsq(design, y[:, inside].T, rcond=None)
            fitted = (design @ coef).T
            # Scaled for the parameters fitted, so the residuals keep the noise's variance.
            scale = np.sqrt(len(inside) / (len(inside) - degree - 1))
            with np.errstate(invalid="ignore", divide="ignore"):
                out[:, inside] = (y[:, inside] / fitted - 1) * scale
    return out[0] if values is None else out


def training_noise(curve: Curve, boundaries, replicates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Factors (n_boot, n) that give each bootstrap replicate curve a new draw of the run's
    training noise: a moving-block bootstrap over evaluations (blocks of n^(1/3), so the noise's
    correlation from step to step is kept) of ``phase_residuals``, as 1 + residual.

    The residuals also hold the part of the individuals' sampling noise that varies from step
    to step, which ``replicates`` (the individual bootstrap's curves at the same steps) already
    resample: the residuals are shrunk by the share of their variance that the same residuals
    of the replicates explain, so it is not counted twice. A curve with too few evaluations per
    phase gets factors of 1.
    """
    n_boot, n = replicates.shape
    if n_boot == 0:
        return np.ones((0, n))
    # Row 0 the curve's residuals; the replicates' are the curve's plus their own sampling
    # deviation, and within each phase the share of the curve's residual variance that
    # deviation explains is taken out.
    rows = phase_residuals(curve, boundaries,
                           np.vstack([curve.loss, np.where(np.isfinite(replicates), replicates, curve.loss[None])]))
    residual, sampling = rows[0], rows[1:] - rows[0]
    usable = np.isfinite(residual)
    if usable.sum() < 4:
        return np.ones((n_boot, n))
    phase, _ = phase_index(curve, boundaries)
    shrunk = np.zeros(n)
    for k in np.unique(phase[usable]):
        inside = usable & (phase == k)
        total = float(np.mean(residual[inside] ** 2))
        own = float(np.mean(sampling[:, inside] ** 2))
        shrunk[inside] = residual[inside] * (np.sqrt(max(0.0, 1 - own / total)) if total > 0 else 0.0)
    pool = shrunk[usable] - shrunk[usable].mean()
    # A few residuals far out are the polynomial's misfit where a phase bends (relative residuals
    # grow where the loss is small), not noise: held to 3 robust sds.
    limit = 3 * 1.4826 * float(np.median(np.abs(pool - np.median(pool))))
    pool = np.clip(pool, -limit, limit)
    block = max(1, round(len(pool) ** (1 / 3)))
    starts = rng.integers(0, len(pool) - block + 1, size=(n_boot, -(-n // block)))
    draws = pool[(starts[:, :, None] + np.arange(block)).reshape(n_boot, -1)[:, :n]]
    return np.maximum(1 + draws, 0.0)
