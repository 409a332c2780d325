"""Study files (trainer/study.py): experiments read into sweeps, in the stated order of overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config import ConfigError
from trainer.study import load_study

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(f'base = "{CONFIGS / "tiny.toml"}"\n' + text)
    return path


def test_an_experiment_layers_study_sweep_and_its_own_overrides(tmp_path):
    sweep = tmp_path / "alpha.toml"
    sweep.write_text('base = "../nowhere.toml"\nseeds = [7]\n[set]\n"sampling.kind" = "power_law"\n'
                     '"train.steps" = 300\n[grid]\n"sampling.alpha" = [0.0, 0.5, 1.0]\n')
    study = load_study(write(tmp_path, 'seeds = [0, 1]\n[set]\n"train.steps" = 200\n"train.lr" = 0.002\n'
                             f'[experiments.alpha]\nsweep = "{sweep.name}"\n'
                             '[experiments.alpha.set]\n"train.lr" = 0.003\n'
                             '[experiments.alpha.grid]\n"sampling.alpha" = [0.2, 0.8]\n'), tmp_path / "runs")
    runs = study.experiments["alpha"].runs
    assert [r.name for r in runs] == ["alpha0.2-seed0", "alpha0.2-seed1", "alpha0.8-seed0", "alpha0.8-seed1"]
    c = runs[0].config
    assert c.sampling.kind == "power_law"  # the sweep file's set
    assert c.train.steps == 300  # the sweep file's set over the study's
    assert c.train.lr == 0.003  # the experiment's set over both
    assert c.world.n_individuals == 400  # the study's base (tiny.toml), not the sweep file's
    assert runs[0].path == tmp_path / "runs" / "study" / "alpha" / "alpha0.2-seed0"


def test_all_runs_names_runs_by_experiment_and_keeps_their_references(tmp_path):
    study = load_study(write(tmp_path, 'seeds = [0]\n[experiments.plateau_vs_n.grid]\n"world.n_individuals" = [100, 200]\n'
                             f'[experiments.patching]\nsweep = "{CONFIGS / "sweeps" / "patching.toml"}"\n'
                             '[experiments.patching.grid]\n"patch.reference_step" = [-1]\n'
                             '[[experiments.patching.include]]\nlabel = "reference"\n"patch.reference" = ""\n'))
    runs = {r.name: r for r in study.all_runs().runs}
    assert sorted(runs) == ["patching/reference-seed0", "patching/reference_step-1-seed0",
                            "plateau_vs_n/N100-seed0", "plateau_vs_n/N200-seed0"]
    assert runs["patching/reference_step-1-seed0"].needs == ["patching/reference-seed0"]
    assert runs["patching/reference_step-1-seed0"].config.patch.reference == str(runs["patching/reference-seed0"].path.resolve())


@pytest.mark.parametrize("text, message", [
    ("[experiments.a]\nsweeps = 'x.toml'\n", "experiments.a: unknown key 'sweeps'"),
    ("colour = 1\n[experiments.a]\n", "unknown key 'colour'"),
    ("", "experiments: none"),
    ("[experiments.a]\nsweep = 'missing.toml'\n", "missing.toml: no such file"),
    ("[experiments.a.set]\n'train.stepz' = 3\n", "experiments.a [seed0]"),
    ("[experiments.'a b']\n", "experiments.a b: use letters"),
])
def test_a_bad_study_file_is_one_line_naming_the_file_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=None) as err:
        load_study(write(tmp_path, text))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert "study.toml" in str(err.value) or "missing.toml" in str(err.value)


def test_the_study_files_of_the_repository_load():
    for path in sorted((CONFIGS / "studies").glob("*.toml")):
        study = load_study(path)
        assert study.experiments and all(s.runs for s in study.experiments.values()), path
