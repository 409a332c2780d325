"""reports: Altair charts and offline HTML pages of runs, their phases and sweeps.

Notebook entry points (imported on first use, so ``import reports`` stays fast):

    reports.run_data(run) -> RunData            a run reduced for drawing (folder or Dataset)
    reports.load_runs(runs_dir) -> [RunData]    every run under a folder
    reports.run_page(run, path=None)            every run figure as one chart (and the page)
    reports.sweep_page(runs, path=None)         every sweep figure as one chart (and the page)
    reports.report(runs_dir, out=None, png=False)   the whole site (``phasefit report``)

One chart each (a run is a RunData, a run folder or a store-schema Dataset):
    loss_chart, accuracy_chart, population_chart, attribute_loss_chart,
    attribute_accuracy_chart, attributes_chart, hallucination_chart,
    acquisition_histogram_chart, acquired_by_decile_chart, rank_chart, acquisition_chart,
    attention_chart, training_chart
Intervention runs: finetune_run_chart (fine-tuning: old against new individuals),
    patching_chart (a patched run over its reference), sequential_chart (groups' accuracy)
Across runs (a list of runs or a folder): scaling_chart, alpha_chart, warmup_chart,
    finetune_chart, known_chart, sweep_charts
"""

from importlib import import_module

_RUN_CHARTS = ("loss_chart", "accuracy_chart", "population_chart", "attribute_loss_chart", "attribute_accuracy_chart",
               "attributes_chart", "hallucination_chart", "acquisition_histogram_chart", "acquired_by_decile_chart",
               "rank_chart", "acquisition_chart", "attention_chart", "training_chart", "phase_layers")
_INTERVENTION_CHARTS = ("finetune_run_chart", "patching_chart", "sequential_chart")
_SWEEP_CHARTS = ("scaling_chart", "alpha_chart", "warmup_chart", "finetune_chart", "known_chart", "sweep_charts")
_EXPORTS = {
    **{name: "reports.charts" for name in _RUN_CHARTS},
    **{name: "reports.sweeps" for name in _SWEEP_CHARTS},
    **{name: "reports.interventions" for name in _INTERVENTION_CHARTS},
    "run_charts": "reports.site",
    "RunData": "reports.data",
    "run_data": "reports.data",
    "load_runs": "reports.data",
    "run_page": "reports.site",
    "sweep_page": "reports.site",
    "report": "reports.site",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'reports' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
