"""Detectors on a real short training run (configs/tiny.toml): they agree within tolerance.

Uses the session's tiny run (``tiny_run`` in conftest.py, trained once with ``phasefit train``),
and analyses its store with every detector and through ``phasefit detect``.
"""

from __future__ import annotations

import json

import pytest

from conftest import run_cli

# A real run's transitions are rounded and its plateau slopes slightly, so the detectors' ways of
# denoising the curve differ more than on the simulator: a wider tolerance than its 2%.
AGREE = 0.05  # share of the run


@pytest.mark.slow
def test_detectors_agree_on_a_tiny_training_run(tiny_run):
    import logstore

    import phasefit

    ds = logstore.open_run(tiny_run)
    phases = phasefit.detect(ds, n_boot=100)
    assert phases.status == "complete"
    run_length = phases.n_steps
    found = {name: phasefit.detect(ds, name, n_boot=0, per_fact=False) for name in ("threshold", "changepoint", "fit")}
    for key in ("t1", "t2"):
        values = {name: getattr(p, key) for name, p in found.items()}
        assert all(v is not None for v in values.values()), {n: p.notes for n, p in found.items()}
        spread = (max(values.values()) - min(values.values())) / run_length
        assert spread <= AGREE, f"{key}: {values} spread {spread:.1%} of the run"
    # Hallucinations appear as the plateau ends (PAPER.md claim 6): the held-out loss leaves its
    # floor after t1 and within 10% of the run of t2.
    assert phases.hallucination_onset is not None, phases.notes
    assert phases.t1 < phases.hallucination_onset and abs(phases.hallucination_lag) <= 0.1 * run_length, \
        (phases.t1, phases.t2, phases.hallucination_onset)
    assert phases.t1 <= phases.t2 and phases.t2_ci is not None
    assert 0 < phases.final_accuracy <= 1 and phases.final_accuracy_ci is not None
    assert len(phases.acquisition_by_decile) == 10


@pytest.mark.slow
def test_detect_command_on_the_tiny_run(tiny_run):
    proc = run_cli("detect", str(tiny_run), "--json", "--n-boot", "50")
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    assert row["status"] == "complete" and row["t1"] is not None
    assert (tiny_run / "phases.json").exists()
