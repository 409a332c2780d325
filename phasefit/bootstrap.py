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
