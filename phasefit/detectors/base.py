"""The estimator interface every phase detector follows, and the rules that name phases.

A detector is ``Detector(**params).fit(curve)``: the constructor only stores parameters,
``fit`` learns ``t1_``, ``t2_``, ``t3_`` (training steps, None when the boundary does not
exist), ``notes_`` (one line per missing or doubtful boundary) and ``diagnostics_``.
A new method is one new file with one subclass registered in ``phasefit.detectors``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from phasefit.curve import Curve


@dataclass
class Boundaries:
    """The three phase boundaries of one curve, in training steps."""

    t1: float | None  # marginals learned: the loss reaches the baseline
    t2: float | None  # plateau end: the loss leaves the baseline downwards for good
    t3: float | None  # knowledge saturated: the loss reaches its final level
    notes: list[str] = field(default_factory=list)
    diagnostics: dict = field(default_factory=dict)

    @property
    def plateau_length(self) -> float | None:
        return None if self.t1 is None or self.t2 is None else self.t2 - self.t1

    def as_array(self) -> np.ndarray:
        return np.array([np.nan if t is None else t for t in (self.t1, self.t2, self.t3)], dtype=float)


class Detector:
    """Base class: subclasses implement ``_boundaries(curve) -> Boundaries``."""

    name = "base"

    def get_params(self) -> dict:
        """Constructor parameters and their current values (scikit-learn convention)."""
        return {n: getattr(self, n) for n in _parameter_names(type(self))}

    def clone(self) -> "Detector":
        """An unfitted copy with the same parameters."""
        return type(self)(**self.get_params())

    def for_replicates(self) -> "Detector":
        """An unfitted copy for bootstrap replicates of the curve just fitted: data-driven
        choices that only guard against noise (a smoothing window) are kept as they were."""
        return self.clone()

    def fit(self, curve: Curve) -> "Detector":
        """Locate t1, t2, t3 on ``curve``; return self."""
        found = self._boundaries(curve)
        self.t1_, self.t2_, self.t3_ = found.t1, found.t2, found.t3
        self.notes_, self.diagnostics_ = found.notes, found.diagnostics
        return self

    def fit_replicates(self, curve: Curve, losses: np.ndarray) -> np.ndarray:
        """t1, t2, t3 for each row of ``losses`` (replicates of ``curve``, which this detector
        was fitted on, at the same steps): an array (rows, 3), NaN where a boundary is missing.
        Subclasses may replace this loop with array operations."""
        out = np.full((len(losses), 3), np.nan)
        for b, loss in enumerate(losses):
            out[b] = self.for_replicates().fit(curve.with_loss(loss)).boundaries_.as_array()
        return out

    @property
    def boundaries_(self) -> Boundaries:
        return Boundaries(self.t1_, self.t2_, self.t3_, list(self.notes_), dict(self.diagnostics_))

    def _boundaries(self, curve: Curve) -> Boundaries:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


@lru_cache(maxsize=None)
def _parameter_names(cls) -> tuple[str, ...]:
    return tuple(p for p in inspect.signature(cls.__init__).parameters if p != "self")


def label_knots(step: np.ndarray, level: np.ndarray, baseline: float, t1_tol: float, t2_tol: float,
                t3_tol: float) -> Boundaries:
    """Name the knots of a fitted piecewise-linear curve with the phase rules.

    ``step`` are the knots (first and last evaluation included) and ``level`` the fitted loss
    there. With the baseline B and the end level E = level[-1]:
    t1 = the first knot with level <= B (1 + t1_tol);
    t2 = the last knot, from t1 on, with level >= B (1 - t2_tol), unless it is the last one;
    t3 = the first knot after t2 from which every level is <= E + t3_tol (B - E), unless
    that is only the last knot (the loss is still falling).
    """
    notes: list[str] = []
    near = np.flatnonzero(level <= baseline * (1 + t1_tol))
    if len(near) == 0:
        notes.append(f"loss never reached the baseline: lowest fitted level {level.min():.3g} nats, "
                     f"baseline {baseline:.3g} nats")
        return Boundaries(None, None, None, notes)
    i1 = near[0]
    above = np.flatnonzero(level[i1:] >= baseline * (1 - t2_tol)) + i1
    i2 = above[-1] if len(above) else i1
    if i2 == len(level) - 1:
        notes.append(f"no plateau end: the fitted loss is still within {t2_tol:.0%} of the baseline at the "
                     f"last evaluation (step {step[-1]:.0f})")
        return Boundaries(float(step[i1]), None, None, notes)
    end = level[-1]
    ceiling = end + t3_tol * (baseline - end)
    high = np.flatnonzero(level[i2:] > ceiling) + i2
    i3 = (high[-1] + 1) if len(high) else i2 + 1
    t3 = None
    if i3 >= len(level) - 1:
        notes.append("knowledge not saturated: the fitted loss is still falling at the last evaluation")
    else:
        t3 = float(step[i3])
    return Boundaries(float(step[i1]), float(step[i2]), t3, notes)
