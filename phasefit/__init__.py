"""phasefit: phases of fact learning, measured.

Notebook entry points (imported on first use, so ``import phasefit`` and the command line
stay fast):

    phasefit.detect(ds_or_curve, method="auto", ...) -> Phases (the phases)
    phasefit.analyse(ds_or_curve, ...) -> Phases (the phases and the intervention measures:
        everything ``phasefit detect`` reports)
    phasefit.simulate(...) -> xarray.Dataset in the store schema, with known phases
    phasefit.population_curves(ds) -> Dataset (step, split, attribute)
    phasefit.ThresholdDetector, ChangepointDetector, SegmentedFitDetector, AutoDetector
    phasefit.crossrun(phases) -> CrossRun; fit_scaling, fit_alpha_optimum, compare_conditions
    phasefit.finetune_effects(run), patching_effect(run), sequential_groups(run) -> dict
        (intervention runs: fine-tuning, attention patching, sequential groups)
"""

from importlib import import_module

_EXPORTS = {
    "detect": "phasefit.phases",
    "Phases": "phasefit.phases",
    "analyse": "phasefit.analysis",
    "phases_table": "phasefit.analysis",
    "Curve": "phasefit.curve",
    "population_curves": "phasefit.summary",
    "simulate": "phasefit.simulate",
    "truth": "phasefit.simulate",
    "Detector": "phasefit.detectors",
    "Boundaries": "phasefit.detectors",
    "ThresholdDetector": "phasefit.detectors",
    "ChangepointDetector": "phasefit.detectors",
    "SegmentedFitDetector": "phasefit.detectors",
    "AutoDetector": "phasefit.detectors",
    "DETECTORS": "phasefit.detectors",
    "crossrun": "phasefit.crossrun",
    "CrossRun": "phasefit.crossrun",
    "fit_scaling": "phasefit.crossrun",
    "fit_alpha_optimum": "phasefit.crossrun",
    "compare_conditions": "phasefit.crossrun",
    "seed_summary": "phasefit.crossrun",
    "PhasefitError": "phasefit.errors",
    "finetune_effects": "phasefit.interventions",
    "patching_effect": "phasefit.interventions",
    "sequential_groups": "phasefit.interventions",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'phasefit' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
