"""Phase detectors: small interchangeable estimators behind one interface.

``Detector(**params).fit(curve)`` learns ``t1_``, ``t2_``, ``t3_`` (training steps),
``notes_`` and ``diagnostics_``. ``DETECTORS`` maps the names used by ``--method`` to the
classes; a new method is one new module and one entry here.
"""

from phasefit.detectors.auto import AutoDetector
from phasefit.detectors.base import Boundaries, Detector, label_knots
from phasefit.detectors.changepoint import ChangepointDetector
from phasefit.detectors.fit import SegmentedFitDetector
from phasefit.detectors.threshold import ThresholdDetector
from phasefit.errors import PhasefitError

DETECTORS = {
    "auto": AutoDetector,
    "threshold": ThresholdDetector,
    "changepoint": ChangepointDetector,
    "fit": SegmentedFitDetector,
}


def make_detector(method: str | Detector = "auto", **params) -> Detector:
    """A detector from its name (``auto``, ``threshold``, ``changepoint``, ``fit``) or as given."""
    if isinstance(method, Detector):
        return method
    if method not in DETECTORS:
        raise PhasefitError(f"unknown method {method!r} (choose from {', '.join(DETECTORS)})")
    return DETECTORS[method](**params)


__all__ = ["DETECTORS", "AutoDetector", "Boundaries", "ChangepointDetector", "Detector", "SegmentedFitDetector",
           "ThresholdDetector", "label_knots", "make_detector"]
