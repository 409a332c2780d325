"""Configuration: presets load, overrides apply, bad input fails with one line and exit 2."""

import pytest

from tests.helpers import ROOT, TINY, run_cli
from phasefit.cli import main
from trainer.config import SAMPLING_KINDS, ConfigError, from_dict, load_config


def test_presets_load_with_the_studys_defaults():
    paper = load_config(ROOT / "configs" / "paper.toml")
    assert (paper.world.n_individuals, paper.world.n_heldout) == (64_000, 16_000)
    assert (paper.model.n_layers, paper.model.d_model, paper.model.n_heads, paper.model.d_mlp) == (8, 512, 8, 2048)
    assert (paper.train.batch_size, paper.train.steps, paper.train.lr) == (128, 16_000, 4e-4)
    assert (paper.train.beta1, paper.train.beta2, paper.train.weight_decay) == (0.9, 0.95, 0.1)
    tiny = load_config(TINY)
    assert tiny.model.preset == "tiny" and tiny.world.n_individuals < 2000


def test_overrides_set_any_key_with_toml_values():
    c = load_config(TINY, ["train.steps=77", "sampling.kind=power_law", "sampling.alpha=0.6", "seed=4"])
    assert (c.train.steps, c.sampling.kind, c.sampling.alpha, c.seed) == (77, "power_law", 0.6, 4)


@pytest.mark.parametrize("override, fragment", [
    ("world.n_people=5", "unknown key 'world.n_people'"),
    ("bogus.key=1", "unknown key 'bogus'"),
    ("train.steps='many'", "train.steps: expected int"),
    ("sampling.alpha=-0.5", "sampling.alpha must be >= 0"),
    ("world.n_heldout=10000000", "world.n_heldout too large"),
    ("sampling.warmup_individuals=5000", "sampling.warmup_individuals must be between 0 and world.n_individuals"),
    ("model.n_heads=3", "model.n_heads must divide model.d_model"),
    ("sampling.kind=zipf", "sampling.kind must be one of"),
    # Values that config.toml could not hold, or that escape the runs folder or the memory:
    ("sampling.celebrity_weight=inf", "sampling.celebrity_weight must be a finite number, not inf"),
    ("train.checkpoint_every_s=nan", "train.checkpoint_every_s must be a finite number, not nan"),
    ("sampling.warmup_epochs=inf", "sampling.warmup_epochs must be a finite number"),
    ("train.checkpoint_every_s=-1", "train.checkpoint_every_s must be positive"),
    ("seed=-1", "seed must be between 0 and 2**63 - 1, not -1"),
    ("name='../escape'", "name must be a plain name (it names the run's folder), not '../escape'"),
    ("world.year_max=99999999999", "world.year_max must be within 10000 years of world.year_min"),
])
def test_bad_configs_fail_with_one_line_naming_the_key(override, fragment, capsys):
    with pytest.raises(ConfigError) as err:
        load_config(TINY, [override])
    assert fragment in str(err.value)
    assert main(["sample", str(TINY), "--set", override]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0]


def test_the_console_command_reports_bad_input_without_a_traceback():
    proc = run_cli("train", str(TINY), "--set", "sampling.alpha=-1", "--out", "/nonexistent/run")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"phasefit: error: {TINY}: sampling.alpha must be >= 0, not -1.0"


def test_missing_and_malformed_files_fail_cleanly(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "nope.toml")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[world\nn_individuals = 3\n")
    assert main(["sample", str(bad)]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_resolved_config_round_trips_through_toml(tmp_path):
    from trainer.run import to_toml

    c = load_config(TINY, ["train.lr=1e-05", "name='x \"quoted\"'"])
    path = tmp_path / "config.toml"
    path.write_text(to_toml(c))
    assert load_config(path) == c


@pytest.mark.parametrize("kind", SAMPLING_KINDS)
@pytest.mark.parametrize("patched", [False, True], ids=["plain", "patched"])
def test_a_configs_conditions_are_those_phasefit_names(kind, patched):
    """Config.conditions() (the store's ``conditions``) gives what phasefit.runs.conditions
    derives from the config, and condition_label the words the reports use."""
    from phasefit.runs import conditions
    from reports.data import condition_label

    data = {"sampling": {"kind": kind, "alpha": 0.7, "celebrities": 100, "celebrity_weight": 10.0,
                         "warmup_individuals": 4000, "warmup_epochs": 2.0, "n_groups": 4, "n_repeats": 2,
                         "replay_weight": 0.25},
            "world": {"n_finetune": 20}, "train": {"init_from": "runs/pretrain"}}
    if patched:
        data["patch"] = {"reference": "runs/ref", "reference_step": 200, "start": 10}
    config = from_dict(data)
    assert config.conditions() == conditions(config.to_dict())
    assert config.condition_label() == condition_label(conditions(config.to_dict()))
    assert config.condition_label() == {
        "uniform": "uniform", "power_law": "power law alpha=0.7", "celebrities": "celebrities 100x10",
        "warmup": "warm-up 4000x2", "sequential": "sequential", "finetune": "fine-tune 20 new, replay 0.25"}[kind]
