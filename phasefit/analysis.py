"""``analyse``: everything ``phasefit detect`` reports about a run.

``detect`` measures the phases; the intervention measures (``phasefit.interventions``) build
on it and on the one ``Summary`` of the run's records it made. ``analyse`` runs the ones the
run's store calls for: fine-tuning for a run whose sampling kind is ``finetune``, the
sequential groups for ``sequential``, the comparison with a reference run for a patched run
(config ``patch.reference``). ``phases_table`` flattens the results into ``phases.csv``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import xarray as xr

from phasefit import interventions
from phasefit.detectors.base import Detector
from phasefit.phases import FROM_TRAINED, Phases, detect, detect_run
from phasefit.runs import open_run, run_info


def analyse(data, method: str | Detector = "auto", *, baseline: float | None = None, n_boot: int = 200,
            level: float = 0.95, seed: int = 0, run: str | None = None, per_fact: bool = True,
            hallucination_tol: float = 0.02, compare_reference: bool = True, **params) -> Phases:
    """``detect`` (same arguments), plus the intervention measures of the run's kind: a
    fine-tuning run gets ``finetune`` (and its final accuracy the old individuals' interval),
    a sequential run ``sequential`` and ``groups``, a patched run ``patching`` and
    ``reference`` (the reference run, read and measured too, unless ``compare_reference`` is
    False). A plain curve gets ``detect``'s result.
    """
    if isinstance(data, (str, Path)):
        data = open_run(data)
    if not isinstance(data, xr.Dataset):
        return detect(data, method, baseline=baseline, run=run, **params)
    info = run_info(data, run)
    phases, summary = detect_run(data, info, method, n_boot=n_boot, level=level, seed=seed, per_fact=per_fact,
                                 hallucination_tol=hallucination_tol, **params)
    if summary is None:  # too little committed to measure anything (the notes say why)
        return phases
    kind = info.conditions.get("sampling")
    if kind == "finetune":
        phases.finetune = interventions.finetune_measures(data, info, summary, n_boot, level, seed)
        phases.final_accuracy_ci = phases.finetune["old_accuracy_final_ci"]
        # detect's note on a run started from a trained model, told of the fine-tuning run it is
        phases.notes = [f"fine-tuning run: {FROM_TRAINED}; see finetune" if note.endswith(FROM_TRAINED) else note
                        for note in phases.notes]
    if kind == "sequential":
        phases.sequential = interventions.sequential_measures(data, info, summary)
        phases.groups = phases.sequential.pop("curves")
    if compare_reference and (info.config.get("patch") or {}).get("reference"):
        phases.patching, phases.reference = interventions.compare_with_reference(
            phases, data, n_boot, level, seed, method, **params)
    return phases


def phases_table(all_phases: list) -> pd.DataFrame:
    """One row per run: the JSON fields flattened (intervals as _lo/_hi columns)."""
    rows = []
    for p in all_phases:
        d = p.to_dict() if isinstance(p, Phases) else dict(p)
        row = {"run": d["run"], "status": d["status"], "method": d["method"], "ci_kind": d.get("ci_kind")}
        row.update({f"cond_{k}": v for k, v in (d.get("conditions") or {}).items()})
        for key in ("t1", "t2", "t3", "plateau_length", "final_accuracy", "hallucination_onset"):
            row[key] = d.get(key)
            ci = d.get({"plateau_length": "plateau_ci"}.get(key, f"{key}_ci"))
            row[f"{key}_lo"], row[f"{key}_hi"] = (ci if ci else (None, None))
        row["hallucination_lag"] = d.get("hallucination_lag")
        finetune, patching = d.get("finetune") or {}, d.get("patching") or {}
        for key in ("collapse_step", "collapse_depth", "new_acquisition_step"):
            row[f"finetune_{key}"] = finetune.get(key)
            row[f"finetune_{key}_lo"], row[f"finetune_{key}_hi"] = finetune.get(f"{key}_ci") or (None, None)
        for key in ("t2_difference", "plateau_difference"):
            row[f"patching_{key}"] = patching.get(key)
            row[f"patching_{key}_lo"], row[f"patching_{key}_hi"] = patching.get(f"{key}_ci") or (None, None)
        row["final_loss"] = d.get("final_loss")
        row["notes"] = "; ".join(d.get("notes") or [])
        rows.append(row)
    return pd.DataFrame(rows)
