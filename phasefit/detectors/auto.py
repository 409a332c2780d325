"""``auto``: the threshold rules (the estimands' definitions), checked by the other detectors.

Every boundary is estimated by the threshold rules, the changepoint search and the segmented
fit. The first detector of the list (the threshold rules, which state the estimands) supplies
each boundary it finds, so that a boundary means the same thing on every run and its
bootstrap replicates are read by the rule that read it; where another detector's estimate
lies more than ``agree_tol`` of the run away, a note names every detector's value. A boundary
the first detector does not find is the median of the others' (if most detectors find it); a
boundary that most detectors find missing is reported missing. ``sources_`` says which
detector supplied each boundary, so its confidence interval comes from bootstrapping that
detector.
"""

from __future__ import annotations

import numpy as np

from phasefit.curve import Curve
from phasefit.detectors.base import Detector
from phasefit.detectors.changepoint import ChangepointDetector
from phasefit.detectors.fit import SegmentedFitDetector
from phasefit.detectors.threshold import ThresholdDetector
from phasefit.rules import BOUNDARIES, Boundaries


class AutoDetector(Detector):
    """Consensus of several detectors.

    Parameters
    ----------
    agree_tol : largest spread between detectors, as a share of the run length, that still
        counts as agreement, beyond which a note lists every detector's value (default 0.02,
        the accuracy every detector reaches on simulated runs at realistic noise).
    detectors : the detectors to combine, in order of preference (default: threshold,
        changepoint, fit, each with its defaults).
    """

    name = "auto"

    def __init__(self, agree_tol: float = 0.02, detectors: tuple[Detector, ...] | None = None):
        self.agree_tol = agree_tol
        self.detectors = detectors

    def _members(self) -> tuple[Detector, ...]:
        if self.detectors is not None:
            return tuple(d.clone() for d in self.detectors)
        return ThresholdDetector(), ChangepointDetector(), SegmentedFitDetector()

    def _boundaries(self, curve: Curve) -> Boundaries:
        members = self._members()
        fitted = {d.name: d.fit(curve).boundaries_ for d in members}
        self.members_ = {d.name: d for d in members}
        # Detectors that could not run (too few evaluations for them) do not vote.
        found = {n: b for n, b in fitted.items() if not b.diagnostics.get("skipped")} or fitted
        self.estimates_ = fitted
        self.sources_ = {}
        values, notes = {}, [f"{n}: {b.notes[0]}; not used" for n, b in fitted.items() if n not in found]
        tolerance = self.agree_tol * curve.run_length
        for k, key in enumerate(BOUNDARIES):
            estimates = {name: b.as_array()[k] for name, b in found.items()}
            present = {name: v for name, v in estimates.items() if np.isfinite(v)}
            if len(present) * 2 < len(estimates) or not present:
                values[key] = None
                continue
            spread = max(present.values()) - min(present.values())
            preferred = next(iter(estimates))
            if preferred in present:
                source = preferred
            else:  # the median of the others (lower median for an even count)
                source = sorted(present, key=present.get)[(len(present) - 1) // 2]
            if spread > tolerance:
                listing = ", ".join(f"{n} {v:.0f}" for n, v in present.items())
                notes.append(f"{key}: detectors disagree by {spread / curve.run_length:.1%} of the run "
                             f"({listing}); reporting {source}")
            values[key] = float(present[source])
            self.sources_[key] = source
        # Reasons for missing boundaries: from the detectors that found them missing.
        for key in BOUNDARIES:
            if values[key] is None:
                for name, b in found.items():
                    if b.notes and getattr(b, key) is None:
                        if f"{name}: {b.notes[0]}" not in notes:
                            notes.append(f"{name}: {b.notes[0]}")
                        break
        # Keep the boundaries ordered when they come from different detectors.
        if values["t1"] is not None and values["t2"] is not None and values["t2"] < values["t1"]:
            values["t2"] = values["t1"]
        if values["t2"] is not None and values["t3"] is not None and values["t3"] < values["t2"]:
            values["t3"] = values["t2"]
        diagnostics = {name: b.diagnostics for name, b in found.items()}
        return Boundaries(values["t1"], values["t2"], values["t3"], notes, diagnostics)
