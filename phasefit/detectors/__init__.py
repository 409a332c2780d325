"""Phase detectors: small interchangeable estimators behind one interface.

``Detector(**params).fit(curve)`` learns ``t1_``, ``t2_``, ``t3_`` (training steps),
``notes_`` and ``diagnostics_``. ``DETECTORS`` maps the names of ``--method`` to the classes;
a new method is one new module and one entry in ``_CLASSES``. The classes are imported on
first use: the detectors pull in scipy (about a second), and the command line reads the
names when it parses its arguments.
"""

from collections.abc import Mapping
from importlib import import_module

_CLASSES = {
    "auto": "phasefit.detectors.auto:AutoDetector",
    "threshold": "phasefit.detectors.threshold:ThresholdDetector",
    "changepoint": "phasefit.detectors.changepoint:ChangepointDetector",
    "fit": "phasefit.detectors.fit:SegmentedFitDetector",
}
_OTHERS = {"Detector": "phasefit.detectors.base:Detector", "Boundaries": "phasefit.rules:Boundaries",
           "label_knots": "phasefit.rules:label_knots"}


def _resolve(target: str):
    module, name = target.split(":")
    return getattr(import_module(module), name)


class _Registry(Mapping):
    """name -> detector class, each class imported when it is first looked up."""

    def __getitem__(self, name: str):
        return _resolve(_CLASSES[name])

    def __iter__(self):
        return iter(_CLASSES)

    def __len__(self) -> int:
        return len(_CLASSES)

    def __repr__(self) -> str:
        return f"DETECTORS({', '.join(_CLASSES)})"


DETECTORS = _Registry()


def make_detector(method="auto", **params):
    """A detector from its name (``auto``, ``threshold``, ``changepoint``, ``fit``) or as given."""
    from phasefit.detectors.base import Detector
    from phasefit.errors import PhasefitError

    if isinstance(method, Detector):
        return method
    if method not in DETECTORS:
        raise PhasefitError(f"unknown method {method!r} (choose from {', '.join(DETECTORS)})")
    return DETECTORS[method](**params)


_EXPORTS = {target.split(":")[1]: target for target in (*_CLASSES.values(), *_OTHERS.values())}
__all__ = sorted(["DETECTORS", "make_detector", *_EXPORTS])


def __getattr__(name: str):
    if name in _EXPORTS:
        value = _resolve(_EXPORTS[name])
        globals()[name] = value
        return value
    raise AttributeError(f"module 'phasefit.detectors' has no attribute {name!r}")
