"""The estimator interface every phase detector follows.

A detector is ``Detector(**params).fit(curve)``: the constructor only stores parameters,
``fit`` learns ``t1_``, ``t2_``, ``t3_`` (training steps, None when the boundary does not
exist), ``notes_`` (one line per missing or doubtful boundary) and ``diagnostics_``.
A new method is one new file with one subclass and one entry in ``phasefit.detectors.DETECTORS``.
"""

from __future__ import annotations

import inspect
from functools import lru_cache

import numpy as np

from phasefit.curve import Curve
from phasefit.rules import Boundaries


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
        """Locate t1, t2, t3 on ``curve``; return self. A long curve is first reduced to log-step
        cells (``Curve.reduced``): bounded memory, the same phases."""
        found = self._boundaries(curve.reduced())
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
