"""``phasefit study`` end to end on a reduced real study: train, detect, judge, report, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from phasefit.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STUDY = f"""
name = "reduced"
seeds = [0, 1]
base = "{CONFIGS / 'tiny.toml'}"
[set]
model = {{ n_layers = 1, d_model = 32, n_heads = 2, d_mlp = 64 }}
"train.steps" = 40
eval = {{ n_evals = 10, subset = 30, n_full = 2, attention_probe = 8 }}
"world.n_heldout" = 10
[experiments.plateau_vs_n.grid]
"world.n_individuals" = [60, 120]
"""


@pytest.mark.slow
def test_a_study_trains_its_experiments_then_writes_a_verdict_per_claim(tmp_path, capsys):
    study = tmp_path / "reduced.toml"
    study.write_text(STUDY)
    out = tmp_path / "runs"
    assert main(["study", str(study), "--out", str(out), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "plateau_vs_n" in plan and "in all" in plan and "estimated" in plan
    assert not (out / "reduced").exists()  # a dry run trains nothing

    assert main(["study", str(study), "--out", str(out), "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    claims = json.loads((out / "reduced" / "claims.json").read_text())
    assert [c["claim"] for c in claims["claims"]] == [1, 2, 3, 4, 5, 6, 7]
    assert all(c["verdict"] in ("reproduced", "not reproduced", "inconclusive") and c["rule"] for c in claims["claims"])
    assert all(c["verdict"] == "inconclusive" for c in claims["claims"] if c["claim"] in (3, 4, 5, 7))  # not run
    assert claims["experiments"] == {"plateau_vs_n": 4}
    for c in claims["claims"][:2]:  # the claims this study measures print their measure
        assert c["title"] in printed
    runs = sorted(p.name for p in (out / "reduced" / "plateau_vs_n").iterdir() if (p / "metrics.zarr").exists())
    assert runs == ["N120-seed0", "N120-seed1", "N60-seed0", "N60-seed1"]
    assert all((out / "reduced" / "plateau_vs_n" / r / "phases.json").exists() for r in runs)
    assert (out / "reduced" / "report" / "index.html").exists()

    assert main(["study", str(study), "--out", str(out)]) == 0  # again: nothing trains, the verdicts are recomputed
    assert "4 already complete, 0 to run" in capsys.readouterr().out


def test_a_bad_study_is_one_line_and_exit_code_2(tmp_path, capsys):
    study = tmp_path / "bad.toml"
    study.write_text('[experiments.alpha]\nsweep = "nowhere.toml"\n')
    assert main(["study", str(study), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("phasefit: error:") and "nowhere.toml: no such file" in err and "\n" not in err
    assert not (tmp_path / "runs").exists()
