"""phasefit.detect on Datasets: the Phases contract, lazy stores, and inputs that must not crash."""

from __future__ import annotations

import json

import numpy as np
import pytest

import phasefit
from phasefit.summary import population_curves
from phasefit.simulate import simulate, to_store

JSON_FIELDS = {"run", "status", "t1", "t2", "t3", "plateau_length", "plateau_ci", "t2_ci", "final_accuracy",
               "hallucination_onset", "method", "notes"}


@pytest.fixture(scope="module")
def small():
    return simulate(n_individuals=300, n_heldout=60, seed=11)


def test_phases_json_has_the_design_fields_and_is_strict_json(small):
    phases = phasefit.detect(small, n_boot=50)
    out = phases.to_dict()
    assert JSON_FIELDS <= set(out)
    assert {"t1_ci", "t3_ci", "hallucination_onset_ci", "hallucination_lag", "final_accuracy_ci",
            "acquisition_by_decile", "estimates", "sources", "diagnostics", "conditions"} <= set(out)
    text = json.dumps(out, allow_nan=False)  # no NaN or numpy types leak into the JSON
    back = json.loads(text)
    assert back["status"] == "complete" and back["method"] == "auto"
    assert back["plateau_length"] == pytest.approx(back["t2"] - back["t1"], rel=1e-6)
    lo, hi = back["plateau_ci"]
    assert lo <= back["plateau_length"] <= hi
    assert set(back["estimates"]) == {"threshold", "changepoint", "fit"}
    assert "gap" not in back and "acquisition" not in back  # large series stay in Python
    # In a notebook, the measurements show in one short line, with their intervals.
    shown = repr(phases)
    assert "\n" not in shown and len(shown) < 300
    assert f"t2={phases.t2:.0f} [{phases.t2_ci[0]:.0f}, {phases.t2_ci[1]:.0f}]" in shown
    # Each boundary comes with the spacing of the evaluations it was read between.
    steps = small["step"].values
    for k in ("t1", "t2", "t3"):
        i = np.searchsorted(steps, back[k])
        assert back["diagnostics"][f"resolution_at_{k}"] == steps[i] - steps[i - 1]


def test_population_curves_are_means_over_evaluated_facts(small):
    curves = population_curves(small)
    assert curves["loss"].dims == ("step", "split", "attribute")
    train = small["loss"].where(small["split"] == "train")
    np.testing.assert_allclose(curves["loss"].sel(split="train").values,
                               train.mean("individual").values, rtol=1e-5)
    np.testing.assert_allclose(curves["mean_loss"].sel(split="train").values,
                               train.mean(("individual", "attribute")).values, rtol=1e-5)
    accuracy = small["correct"].where(small["split"] == "train").mean(("individual", "attribute"))
    np.testing.assert_allclose(curves["mean_accuracy"].sel(split="train").values, accuracy.values, rtol=1e-5)


def test_lazy_dask_dataset_gives_the_same_phases(small):
    eager = phasefit.detect(small, n_boot=30)
    lazy = phasefit.detect(small.chunk({"step": 16, "individual": 128}), n_boot=30)
    for key in ("t1", "t2", "t3", "final_accuracy", "hallucination_onset"):
        assert getattr(lazy, key) == pytest.approx(getattr(eager, key))
    assert lazy.t2_ci == pytest.approx(eager.t2_ci)
    assert lazy.acquisition_by_decile == eager.acquisition_by_decile


def test_store_written_by_logstore_reads_back_to_the_same_phases(small, tmp_path):
    import logstore

    to_store(small, tmp_path / "run")
    from_store = phasefit.detect(logstore.open_run(tmp_path / "run"), n_boot=30)
    in_memory = phasefit.detect(small, n_boot=30)
    assert from_store.t2 == pytest.approx(in_memory.t2)
    assert from_store.final_accuracy == pytest.approx(in_memory.final_accuracy)
    assert from_store.acquisition_by_decile == in_memory.acquisition_by_decile
    # A run is named by its folder, however it was opened (several runs share a config name).
    assert from_store.run == "run"
    assert phasefit.detect(tmp_path / "run" / "metrics.zarr", n_boot=0).run == "run"


def test_subset_evaluation_still_finds_the_phases():
    ds = simulate(n_individuals=2000, n_heldout=200, eval_subset=300, n_full=12, seed=12)
    assert np.isnan(ds["loss"].values).mean() > 0.5
    phases = phasefit.detect(ds, n_boot=50)
    assert abs(phases.t2 - 4000) / 16000 < 0.02
    assert phases.acquisition_by_decile[0]["n_facts"] == 1200


def test_running_and_failed_runs_are_flagged(small):
    running = small.isel(step=slice(0, 120)).assign_attrs(status="running", committed_steps=120)
    phases = phasefit.detect(running, n_boot=20)
    assert phases.status == "running" and not phases.complete
    assert phases.t2 is not None and phases.t3 is None  # saturation lies beyond the committed rows
    assert phases.notes[0].startswith("incomplete: still running")
    failed = phasefit.detect(small.assign_attrs(status="failed"), n_boot=0)
    assert failed.status == "failed" and any("run failed" in n for n in failed.notes)


def test_nan_curves_and_empty_stores_give_notes_not_errors(small):
    all_nan = small.copy()
    all_nan["loss"] = all_nan["loss"] * np.nan
    phases = phasefit.detect(all_nan)
    assert phases.t1 is None and "train loss is NaN at every evaluation" in phases.notes
    json.dumps(phases.to_dict(), allow_nan=False)
    empty = phasefit.detect(small.isel(step=slice(0, 0)))
    assert empty.t1 is None and empty.notes == ["no committed evaluation steps"]
    some_nan = small.copy(deep=True)
    some_nan["loss"][5:8] = np.nan  # three evaluations lost
    partial = phasefit.detect(some_nan, n_boot=20)
    assert partial.t2 is not None and any("3 evaluations had no finite train loss" in n for n in partial.notes)


def test_a_run_without_plateau_says_so():
    ds = simulate(n_individuals=300, n_heldout=10, t1=300, t2=310, t3=3000, seed=13)
    phases = phasefit.detect(ds, "threshold", n_boot=20)
    assert phases.plateau_length < 160
    assert any(n.startswith("no plateau") for n in phases.notes)


def test_conditions_name_what_describes_each_kind_of_run():
    from phasefit.runs import conditions

    base = {"seed": 1, "world": {"n_individuals": 400, "n_finetune": 0},
            "sampling": {"kind": "uniform", "alpha": 0.5, "n_groups": 4, "n_repeats": 2, "replay_weight": 0.5},
            "patch": {"reference": "", "reference_step": 1007, "start": 0}}
    assert conditions(base) == {"N": 400, "n_finetune": 0, "sampling": "uniform", "seed": 1}
    sequential = {**base, "sampling": {**base["sampling"], "kind": "sequential"}}
    assert conditions(sequential)["groups"] == 4 and conditions(sequential)["repeats"] == 2
    assert "alpha" not in conditions(sequential) and "replay" not in conditions(sequential)
    patched = {**base, "patch": {**base["patch"], "reference": "/runs/reference"}}
    assert conditions(patched)["patterns_from"] == 1007 and conditions(patched)["patch_start"] == 0


def test_the_trainers_attributes_are_read_and_older_stores_derive_them(small):
    told = small.copy()
    told.attrs.update(conditions=json.dumps({"N": 7, "sampling": "uniform"}), condition_label="as the trainer says")
    phases = phasefit.detect(told, n_boot=0, per_fact=False)
    assert phases.conditions == {"N": 7, "sampling": "uniform"} and phases.condition_label == "as the trainer says"
    older = small.copy()
    for name in ("stages", "conditions", "condition_label"):
        del older.attrs[name]
    phases = phasefit.detect(older, n_boot=0, per_fact=False)
    assert phases.conditions["N"] == 300 and phases.condition_label == "uniform"
    assert phases.to_dict()["condition_label"] == "uniform"


def test_chance_accuracy_is_read_as_the_mean_over_attributes_and_is_none_for_older_stores(small):
    chance = np.array([0.0, 0.01, 0.02, 0.03, 0.04, 0.2])
    phases = phasefit.detect(small.assign(chance_accuracy=("attribute", chance)), n_boot=0, per_fact=False)
    assert phases.chance_accuracy == pytest.approx(0.05) and phases.to_dict()["chance_accuracy"] == pytest.approx(0.05)
    assert phasefit.detect(small, n_boot=0, per_fact=False).chance_accuracy is None  # no such variable
    unknown = small.assign(chance_accuracy=("attribute", np.full(6, np.nan)))  # written as unknown
    assert phasefit.detect(unknown, n_boot=0, per_fact=False).to_dict()["chance_accuracy"] is None


def test_every_interval_says_what_it_resamples():
    """One run's intervals resample its individuals only, and say so wherever they are shown;
    the seed-level intervals of crossrun say they are over seeds."""
    runs = [phasefit.detect(simulate(n_individuals=200, n_heldout=20, n_evals=40, seed=s), n_boot=30) for s in (0, 1)]
    assert runs[0].ci_kind.startswith("one seed") and "not seed-to-seed" in runs[0].to_dict()["ci_kind"]
    assert phasefit.detect(simulate(n_individuals=200, n_heldout=20, n_evals=40), n_boot=0).ci_kind is None
    from phasefit.crossrun import crossrun

    seeds = crossrun(runs).seeds
    assert len(seeds) and seeds["ci_kind"].str.startswith("seeds: t interval over 2").all()
    from phasefit.commands import format_table

    assert "95% CI: one seed" in format_table([r.to_dict() for r in runs])
