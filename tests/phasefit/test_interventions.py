"""Fine-tuning, patching and sequential-group measures recover known answers."""

from __future__ import annotations

import json

import pytest

import phasefit
from phasefit import interventions
from phasefit.commands import analyse_run, format_table
from phasefit.detectors import ThresholdDetector
from phasefit.simulate import expected_curve, simulate, to_store
from tests.helpers.intervention_runs import FINETUNE_TRUTH, finetune_run, patched_pair, sequential_run, sequential_truth


@pytest.fixture(scope="module")
def finetune():
    return finetune_run()


def test_finetune_measures_recover_the_truth_and_their_intervals_cover_it(finetune):
    out = interventions.finetune_effects(finetune, n_boot=200, seed=0)
    assert out["notes"] == [] and out["n_old"] == 300 and out["n_new"] == 150 and out["replay_weight"] == 0.25
    for key, truth in FINETUNE_TRUTH.items():
        assert out[key] == pytest.approx(truth, abs=0.002 if truth < 1 else 1), key
        if f"{key}_ci" in out:
            low, high = out[f"{key}_ci"]
            assert low <= truth <= high and high - low < (0.1 if truth < 1 else 300), (key, low, high)
    assert out["old_accuracy_min_step"] == 120
    json.dumps(out)  # JSON-able as it is


def test_analyse_reports_a_finetune_run_without_phases(finetune, tmp_path):
    phases = phasefit.analyse(finetune, n_boot=50)
    assert phases.t1 is None and phases.t2 is None and phases.plateau_length is None
    assert any("fine-tuning run" in note for note in phases.notes)
    assert phases.finetune["collapse_step"] == pytest.approx(70)
    assert phases.final_accuracy == pytest.approx(0.75) and phases.final_accuracy_ci == phases.finetune["old_accuracy_final_ci"]
    row = analyse_run(str(to_store(finetune, tmp_path / "ft")), "ft", n_boot=20)
    assert row["finetune"]["new_acquisition_step"] == pytest.approx(1200) and row["patching"] is None
    table = format_table([row])
    assert "collapse step" in table and "70 [" in table and "1200 [" in table


def test_finetune_measures_of_a_run_without_new_individuals_give_one_reason():
    out = interventions.finetune_effects(simulate(n_individuals=100, n_heldout=20, n_evals=30, seed=1), n_boot=20)
    assert out["notes"] == ["no finetune split: the store has no new individuals, so this is not a fine-tuning run"]
    assert all(out[k] is None for k in interventions.FINETUNE_MEASURES)


def test_too_few_new_facts_acquired_give_no_median(finetune):
    ds = finetune.copy(deep=True)
    new = ds["split"].values == "finetune"
    ds["correct"].values[:, new, :4] = False  # 4 of 6 attributes never learned: 0.8 x 2/6 acquired
    out = interventions.finetune_effects(ds, n_boot=20)
    assert out["new_acquisition_step"] is None and out["new_acquisition_step_ci"] is None
    assert out["new_acquired"] == pytest.approx(0.8 * 2 / 6, abs=0.002)
    assert any("the median needs half" in note for note in out["notes"])


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("patching")
    patched, reference = patched_pair(root / "reference")
    to_store(reference, root / "reference")
    return to_store(patched, root / "patched"), patched, reference


def _threshold_t2(ds) -> float:
    return ThresholdDetector().fit(expected_curve(ds)).t2_


def test_patching_effect_compares_the_plateaus_with_a_paired_interval(pair):
    path, patched, reference = pair
    out = interventions.patching_effect(path, n_boot=100, method="threshold")
    assert out["paired"] is True and out["patterns_after_plateau"] is True and out["patterns_from"] == 8000
    truth = _threshold_t2(patched) - _threshold_t2(reference)  # what the population curves would give
    assert out["t2_difference"] == pytest.approx(truth, rel=0.05) and -1300 < truth < -1100
    low, high = out["t2_difference_ci"]
    assert low <= truth <= high
    assert out["patched"]["t2"] == pytest.approx(800, rel=0.05)
    assert out["reference_run"]["t2"] == pytest.approx(2000, rel=0.05)
    assert out["plateau_difference"] == pytest.approx(out["t2_difference"], abs=60)  # same t1
    phases = phasefit.analyse(path, method="threshold", n_boot=100)
    assert phases.patching == out and phases.reference.t2 == out["reference_run"]["t2"]
    json.dumps(phases.to_dict())


def test_a_missing_reference_gives_one_reason_and_keeps_the_plateau(tmp_path):
    patched, _ = patched_pair(tmp_path / "nowhere")
    out = interventions.patching_effect(patched, n_boot=20)
    assert out["notes"] == [f"reference run {tmp_path / 'nowhere'}: no such run folder (no metrics.zarr there)"]
    assert out["patched"]["t2"] == pytest.approx(800, rel=0.05) and out["t2_difference"] is None
    unpatched = interventions.patching_effect(simulate(n_individuals=100, n_heldout=10, n_evals=30), n_boot=0)
    assert unpatched["notes"] == ["not a patched run: its config has no patch.reference"]


@pytest.fixture(scope="module")
def sequential():
    return sequential_run()


def test_sequential_groups_recover_learning_and_forgetting_times(sequential):
    ds, target = sequential
    out = interventions.sequential_groups(ds)
    curves = out.pop("curves")
    assert abs(curves["accuracy"].values - target).max() < 1 / 600  # one fact of a group
    assert [g["n_individuals"] for g in out["groups"]] == [100, 100, 100]
    assert out["groups"][0]["ranks"] == [0, 99] and out["bounds"] == [0, 200, 400, 600, 800, 1000, 1200]
    truth = sequential_truth()
    assert [row["group"] for row in out["visits"]] == [0, 1, 2, 0, 1, 2]
    for row in out["visits"]:
        expected = truth[row["visit"]]
        assert row["learn_steps"] == pytest.approx(expected["learn_steps"], abs=1.5)
        if expected["forget_steps"] is None:
            assert row["forget_steps"] is None
        else:
            assert row["forget_steps"] == pytest.approx(expected["forget_steps"], abs=1.5)
    learn = [row["learn_steps"] for row in out["visits"]]
    assert learn == sorted(learn, reverse=True)  # learned faster over time
    assert out["median_forget_steps"] < out["median_learn_steps"]  # forgotten faster than learned
    assert out["visits"][1]["others_drop"] > 0.4  # group 0 forgotten during visit 1
    phases = phasefit.analyse(ds, n_boot=0)
    assert phases.sequential["visits"] == out["visits"] and phases.groups.sizes == curves.sizes


def test_sequential_groups_of_another_run_give_one_reason():
    out = interventions.sequential_groups(simulate(n_individuals=100, n_heldout=10, n_evals=30))
    assert out["notes"] == ["not a sequential run: sampling.kind is 'uniform'"] and out["visits"] == []


def test_sequential_groups_follow_the_stores_stages_and_older_stores_derive_them(sequential):
    ds, _ = sequential
    older = ds.copy()
    del older.attrs["stages"]
    assert interventions.sequential_groups(older)["visits"] == interventions.sequential_groups(ds)["visits"]
    told = ds.copy()
    told.attrs["stages"] = json.dumps([{"start": 0, "end": 600, "label": "a", "ranks": [150, 299]},
                                       {"start": 600, "end": 1200, "label": "b", "ranks": [0, 149]}])
    out = interventions.sequential_groups(told)
    assert out["bounds"] == [0, 600, 1200] and out["n_groups"] == 2 and out["n_repeats"] == 1
    assert [g["ranks"] for g in out["groups"]] == [[0, 149], [150, 299]]
    assert [(v["visit"], v["group"]) for v in out["visits"]] == [(0, 1), (1, 0)]
