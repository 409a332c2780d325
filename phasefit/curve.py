"""One loss curve: the object every detector fits.

A ``Curve`` is the population loss L(t) (nats) at evaluation steps t (training steps), the
no-knowledge baseline B (nats), and optionally the accuracy. It is built from a store's
population curve, from any ``xarray.DataArray`` or ``pandas.Series`` of loss by step, or from
a CSV file, so training logs from other trainers are segmented the same way.

A long curve (a log of every training step) is reduced before any detector sees it
(``Curve.reduced``): its rows are averaged within at most ``MAX_CELLS`` cells of equal width
on log(1 + step), each cell keeping its row count as a weight and the curve the noise of one
row, so every detector works in bounded memory and time whatever the curve's length.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from phasefit.errors import PhasefitError

MAX_BASELINE = 1e4  # nats: the log of a vocabulary of e^10000 words, far beyond any model
# Cells a long curve is averaged into: 0.01 log-step units on a 16k-step run, far finer than
# any phase (t1 -> t2 of a fast run spans about 1 unit), and four per point of the changepoint
# grid, which a cell straddling one of its edges shifts by a cell width (on simulated 10^6-row
# runs its worst error was 1.8% of the run with 512 cells, 0.5% with 1024, 0.4% on the rows);
# the fit's knot search over them stays a few MB. Shorter curves are used as they are.
MAX_CELLS = 1024


@dataclass(frozen=True)
class Curve:
    """Population loss by step. Arrays are 1-D, aligned, sorted by step, free of NaN."""

    step: np.ndarray  # training steps of the evaluations
    loss: np.ndarray  # nats
    baseline: float  # nats: the no-knowledge loss B
    accuracy: np.ndarray | None = None  # fraction of facts correct, per step
    n_steps: float | None = None  # run length in steps (default: the last step)
    weight: np.ndarray | None = None  # rows averaged into each point (a reduced curve); None: 1 each
    noise: float | None = None  # sd of one row's loss when the points are averages (see row_noise)

    @property
    def run_length(self) -> float:
        """Steps covered by the run: the scale of the '2% of the run' tolerances."""
        return float(self.n_steps if self.n_steps else max(self.step[-1], 1))

    @cached_property
    def log_step(self) -> np.ndarray:
        """log(1 + step): the axis on which the phases are closest to straight lines."""
        return np.log1p(self.step.astype(float))

    def with_loss(self, loss: np.ndarray) -> "Curve":
        """The same evaluation steps with another loss (a bootstrap replicate, a smoothing)."""
        other = Curve(self.step, loss, self.baseline, self.accuracy, self.n_steps, self.weight, self.noise)
        if "log_step" in self.__dict__:
            other.__dict__["log_step"] = self.log_step  # same steps: reuse the cached axis
        return other

    def reduced(self, cells: int = MAX_CELLS) -> "Curve":
        """This curve with its points averaged within ``cells`` equal cells of log(1 + step),
        the empty cells dropped; the curve itself when it has at most ``cells`` points.

        Each point is its cell's weighted mean log-step and loss (a straight piece of the
        curve passes through it, so crossings and fits read on the cells are those of the
        rows), ``weight`` its number of rows, ``noise`` the sd of one row estimated from the
        rows, and the run length is kept (the rules' tolerances are shares of it)."""
        if len(self.step) <= cells:
            return self
        starts, w = self._cells(cells)
        x = reduce_rows(starts, w, self.log_step)
        acc = None
        if self.accuracy is not None:  # a missing accuracy neither counts nor weighs
            known = np.isfinite(self.accuracy)
            with np.errstate(invalid="ignore", divide="ignore"):
                acc = reduce_rows(starts, w * known, np.where(known, self.accuracy, 0.0))
        reduced = Curve(np.expm1(x), reduce_rows(starts, w, self.loss), self.baseline, acc, self.run_length,
                        np.add.reduceat(w, starts), row_noise(self))
        reduced.__dict__["log_step"] = x  # exact cell means, not log1p(expm1(x))
        return reduced

    def reduced_losses(self, losses: np.ndarray, cells: int = MAX_CELLS) -> np.ndarray:
        """Losses at this curve's steps (rows: bootstrap replicates) averaged into the cells of
        ``reduced(cells)``; unchanged when the curve is not reduced."""
        if len(self.step) <= cells:
            return losses
        return reduce_rows(*self._cells(cells), values=losses)

    def _cells(self, cells: int) -> tuple[np.ndarray, np.ndarray]:
        """First point of each non-empty cell (points are sorted, so a cell is a run of them),
        and the points' weights."""
        x = self.log_step
        width = max((x[-1] - x[0]) / cells, 1e-300)
        cell = np.minimum(((x - x[0]) / width).astype(np.int64), cells - 1)  # the last cell closed
        starts = np.flatnonzero(np.r_[True, np.diff(cell) > 0])
        return starts, (np.ones(len(x)) if self.weight is None else self.weight)

    @classmethod
    def clean(cls, step, loss, baseline, accuracy=None, n_steps=None) -> "Curve":
        """Sort by step and drop steps whose loss is NaN or infinite. Values no training run
        can give (negative steps or losses, a step twice, an accuracy outside [0, 1], a
        baseline of 10^4 nats or more) are a PhasefitError."""
        if not (np.isfinite(baseline) and 0 < baseline < MAX_BASELINE):
            raise PhasefitError(f"the baseline must be a no-knowledge loss above 0 and below {MAX_BASELINE:.0f} nats, "
                                f"not {baseline}")
        step = np.asarray(step, dtype=float)
        loss = np.asarray(loss, dtype=float)
        keep = np.isfinite(loss) & np.isfinite(step)
        order = np.argsort(step[keep], kind="stable")
        step, loss = step[keep][order], loss[keep][order]
        acc = None if accuracy is None else np.asarray(accuracy, dtype=float)[keep][order]
        checks = [(step < 0, "a negative step"), (np.r_[False, np.diff(step) == 0], "a step given twice"),
                  (loss < 0, "a negative loss (a cross-entropy is >= 0)")]
        if acc is not None:
            checks.append(((acc < 0) | (acc > 1), "an accuracy outside [0, 1]"))  # NaN compares False: missing
        for bad, what in checks:
            if bad.any():
                i = int(np.argmax(bad))
                value = f"accuracy {acc[i]:g}" if "accuracy" in what else f"loss {loss[i]:g}"
                raise PhasefitError(f"{what} at step {step[i]:g} ({value})")
        return cls(step, loss, float(baseline), acc, n_steps)

    @classmethod
    def from_series(cls, loss, baseline: float | None = None, accuracy=None, n_steps=None) -> "Curve":
        """From an ``xarray.DataArray`` (dimension ``step``) or ``pandas.Series`` (index = step).

        The baseline comes from the argument, else from ``loss.attrs["baseline"]``.
        """
        if baseline is None:
            baseline = getattr(loss, "attrs", {}).get("baseline")
        if baseline is None:
            raise PhasefitError("a plain curve needs its baseline (the no-knowledge loss, nats): pass baseline=")
        if hasattr(loss, "dims"):  # xarray
            if loss.ndim != 1:
                raise PhasefitError(f"a curve must be 1-D over step, got dimensions {loss.dims}")
            dim = loss.dims[0]
            step = loss[dim].values
            values = loss.values
            if accuracy is not None and hasattr(accuracy, "dims"):
                accuracy = accuracy.values
        else:  # pandas
            step = np.asarray(loss.index, dtype=float)
            values = np.asarray(loss.values, dtype=float)
            if accuracy is not None and hasattr(accuracy, "index"):
                accuracy = accuracy.reindex(loss.index).values
        return cls.clean(step, values, baseline, accuracy, n_steps)

    @classmethod
    def from_csv(cls, path: str | Path, baseline: float | None) -> "Curve":
        """From a CSV with ``step`` and ``loss`` columns (optionally ``accuracy``)."""
        import pandas as pd

        path = Path(path)
        if baseline is None:
            raise PhasefitError(f"{path}: --curve needs --baseline (the no-knowledge loss in nats)")
        if path.is_dir():
            raise PhasefitError(f"{path}: a folder, not a CSV file")
        try:
            header = pd.read_csv(path, nrows=0).columns
            columns = {str(c).strip().lower(): c for c in header}
            missing = [c for c in ("step", "loss") if c not in columns]
            if missing:
                raise PhasefitError(f"{path}: no '{missing[0]}' column (columns: {', '.join(map(str, header))})")
            # Only the columns used: a training log's other columns would multiply the memory.
            table = pd.read_csv(path, usecols=[columns[c] for c in ("step", "loss", "accuracy") if c in columns])
        except FileNotFoundError:
            raise PhasefitError(f"{path}: no such file") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise PhasefitError(f"{path}: not a readable CSV ({str(err).splitlines()[0]})") from None
        except MemoryError:
            raise PhasefitError(f"{path}: too large to read into memory ({path.stat().st_size / 2**20:.0f} MiB); "
                                "keep fewer rows (every k-th step) and try again") from None

        def numbers(name: str):
            raw = table[columns[name]]
            values = pd.to_numeric(raw, errors="coerce")
            text = values.isna() & raw.notna()  # NaN and empty cells are missing values; words are errors
            if text.any():
                row = int(np.argmax(text.to_numpy()))
                raise PhasefitError(f"{path}: '{name}' is not a number in row {row + 2}: {raw.iloc[row]!r}")
            return values

        step, loss = numbers("step"), numbers("loss")
        acc = numbers("accuracy") if "accuracy" in columns else None
        try:
            curve = cls.clean(step, loss, baseline, acc)
        except PhasefitError as err:
            raise PhasefitError(f"{path}: {err}") from None
        if len(curve.step) == 0:
            raise PhasefitError(f"{path}: no rows with a numeric step and loss")
        return curve


def reduce_rows(starts: np.ndarray, weight: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Weighted means of ``values`` (the last axis: points; a matrix for replicates) within
    the runs of points beginning at ``starts``."""
    return np.add.reduceat(values * weight, starts, axis=-1) / np.add.reduceat(weight, starts)


def row_noise(curve: Curve) -> float:
    """Sd of one row's loss (nats): as recorded when the curve was reduced from its rows,
    else estimated from its points (``estimate_noise``)."""
    return float(curve.noise) if curve.noise is not None else estimate_noise(curve)


def estimate_noise(curve: Curve) -> float:
    """Standard deviation of the loss noise (nats), from local pseudo-residuals.

    Each point is compared with the straight line through its two neighbours (on the
    log-step axis); for independent noise that difference has variance
    sigma^2 (1 + w_left^2 + w_right^2). The median absolute value makes the estimate blind to
    the few points at phase boundaries where the curve bends.
    """
    if len(curve.loss) < 5:
        return float("nan")
    return float(1.4826 * np.median(np.abs(pseudo_residuals(curve))))


def pseudo_residuals(curve: Curve) -> np.ndarray:
    """Each interior point minus the straight line (log-step axis) through its neighbours,
    scaled to the noise's own variance: for independent noise of sd sigma they have sd sigma."""
    x, y = curve.log_step, curve.loss
    x0, x1, x2 = x[:-2], x[1:-1], x[2:]
    w = (x1 - x0) / np.maximum(x2 - x0, 1e-12)  # weight of the right neighbour
    residual = y[1:-1] - ((1 - w) * y[:-2] + w * y[2:])
    return residual / np.sqrt(1 + (1 - w) ** 2 + w**2)


def local_noise(curve: Curve, half: int) -> np.ndarray:
    """Noise sd (nats) at every point: 1.4826 x the running median of |pseudo-residuals| over
    2 half + 1 points. The training noise scales with the loss (a 1% step noise is 0.17 nats
    at the start of a run, 0.008 at its end), so one sd for the whole curve would be too small
    early and too large late."""
    from scipy.ndimage import median_filter

    a = np.abs(pseudo_residuals(curve))
    s = 1.4826 * median_filter(np.r_[a[0], a, a[-1]], size=2 * half + 1, mode="nearest")
    # Floored at 1e-3 of the largest (weights 1 / s^2 within a factor 1e6 of each other, so
    # that sums of them keep their precision on a noise-free curve) and at float32's resolution
    # of the loss.
    return np.maximum(s, max(1e-3 * float(s.max()), 1e-6 * max(curve.baseline, 1.0)))


MAX_CORRELATION = 0.9  # a residual lag-one correlation is capped: (1 + rho) / (1 - rho) at most 19


def long_run_variance(r: np.ndarray, dof: int, same: np.ndarray | None = None) -> tuple[float, float]:
    """Residuals' variance (sum of squares / ``dof``) times (1 + rho) / (1 - rho), rho their
    lag-one correlation (over the neighbours ``same`` marks, default all; capped at
    ``MAX_CORRELATION``): the variance of a mean of AR(1) noise, which is what a penalty for
    fitting that noise must be scaled by. Returns it and rho."""
    products = r[1:] * r[:-1]
    if same is not None:
        products = products[same]
    rho = float(np.clip(np.sum(products) / max(np.sum(r * r), 1e-300), 0.0, MAX_CORRELATION))
    return float(np.sum(r * r) / max(dof, 1)) * (1 + rho) / (1 - rho), rho


def smooth_for_band(curve: Curve, band: float, window: int | str = "auto", max_window: int = 15) -> tuple[Curve, int]:
    """Running-median smoothing so that the noise stays below a quarter of ``band`` (nats).

    ``window`` "auto" picks the smallest odd window (at most ``max_window`` evaluations) that
    brings the estimated noise below band / 4 (a median of w points has sd about
    1.25 sigma / sqrt(w)); an integer forces that window; 1 leaves the curve as is. Returns
    the curve and the window.
    """
    from scipy.ndimage import median_filter

    if window == "auto":
        noise = estimate_noise(curve)
        if not np.isfinite(noise) or band <= 0 or noise <= band / 4:
            window = 1
        else:
            window = min(int(np.ceil((4 * 1.25 * noise / band) ** 2)) | 1, max(int(max_window), 1))
    window = max(int(window), 1)
    if len(curve.loss) <= window:  # a window as long as the curve would flatten it: none
        return curve, 1
    if window > 1:
        curve = curve.with_loss(median_filter(curve.loss, size=window, mode="nearest"))
    return curve, window


def largest_window(n: int, span: float, cap: int = 15) -> int:
    """The largest odd running-median window covering at most ``span`` of ``n`` evaluations
    (and at most ``cap``); 1 when even 3 would cover more."""
    w = min(int(span * n), cap)
    return max(w if w % 2 else w - 1, 1)
