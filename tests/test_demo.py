"""phasefit demo: the whole pipeline on the CPU, and the study's two findings on its own output."""

import json
import re

import numpy as np
import pytest

import logstore
from tests.helpers import ROOT, run_cli
from trainer.config import load_config


def plateau_in_store(run) -> float:
    """Steps the trained individuals' mean loss spends within 5% of the baseline: the plateau,
    read from the store without phasefit's detectors."""
    ds = logstore.open_run(run)
    curves = logstore.population_curves(ds)
    loss = curves.loss.sel(split="train").mean("attribute").values
    near = np.abs(loss - float(ds.baseline.mean())) <= 0.05 * float(ds.baseline.mean())
    steps = ds.step.values
    return float(sum(b - a for a, b, x, y in zip(steps, steps[1:], near, near[1:]) if x and y))


@pytest.mark.slow
def test_the_demo_measures_a_plateau_that_grows_with_n_and_shrinks_under_a_power_law(tmp_path):
    out = tmp_path / "demo"
    proc = run_cli("demo", "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    runs = sorted(p.parent for p in (out / "runs").rglob("metrics.zarr"))
    detected, measured = {}, {}
    for run in runs:
        config = load_config(run / "config.toml")
        key = (config.sampling.kind, config.world.n_individuals)
        phases = json.loads((run / "phases.json").read_text())  # written by the demo's detect step
        assert phases["status"] == "complete" and phases["t1"] is not None
        detected[key] = phases["plateau_length"]
        measured[key] = plateau_in_store(run)
    sizes = sorted({n for _, n in detected})
    assert len(sizes) == 3 and {kind for kind, _ in detected} == {"uniform", "power_law"} and len(runs) == 6

    for plateau in (detected, measured):  # phasefit's detectors, and a plain reading of the stores
        for kind in ("uniform", "power_law"):
            series = [plateau[kind, n] for n in sizes]
            assert all(v is not None and v > 0 for v in series), (kind, series)
            assert all(a < b for a, b in zip(series, series[1:])), f"{kind}: plateau {series} for N = {sizes}"
    # Shorter under the power law: in the store's plain reading at the largest N. phasefit's
    # reading of one seed per condition need not agree at every N (the intervals overlap and
    # the demo says it cannot separate conditions from seed noise): each verdict printed is the
    # one its phases.json values give.
    assert measured["power_law", sizes[-1]] < measured["uniform", sizes[-1]], measured

    # What the user sees: the phase table, the findings, and where the report is.
    assert "plateau [95% CI]" in proc.stdout
    assert "plateau grows with N, uniform: yes" in proc.stdout and "plateau grows with N, power_law: yes" in proc.stdout
    for n in sizes:
        verdict = "yes" if detected["power_law", n] < detected["uniform", n] else "NO"
        assert f"shorter under the power law, N={n}: {verdict}:" in proc.stdout
    assert "cannot show seed-to-seed spread" in proc.stdout
    index = out / "report" / "index.html"
    assert index.exists() and str(index) in proc.stdout

    # The README's notebook example, as printed there, on this demo's runs.
    import matplotlib

    matplotlib.use("Agg")
    example = re.search(r"## Exploring results in a notebook.*?```python\n(.*?)```", (ROOT / "README.md").read_text(),
                        re.S).group(1)
    assert '"demo/runs/demo' in example
    exec(compile(example.replace('"demo/runs/demo', f'"{out}/runs/demo'), "README.md", "exec"), {})


def test_the_demos_findings_carry_their_intervals_and_say_they_are_one_seeds(tmp_path, capsys):
    """What the demo prints after detect, on simulated stores of its two kinds at two N (no training)."""
    from phasefit.commands import detect_runs
    from phasefit.demo import format_findings, plateau_findings
    from phasefit.simulate import simulate, to_store

    for n, t2 in ((300, 2000), (600, 4000)):
        for alpha, factor in ((0.0, 1.0), (0.7, 0.6)):
            ds = simulate(n_individuals=n, n_heldout=20, t2=factor * t2, t3=2.5 * t2, alpha=alpha, seed=n)
            to_store(ds, tmp_path / f"N{n}-a{alpha:g}")
    assert detect_runs([str(tmp_path)], n_boot=20) == 0
    findings = plateau_findings(tmp_path)
    text = format_findings(findings)
    assert "plateau grows with N, uniform: yes" in text and ": NO:" not in text
    low, high = findings["plateau_ci"]["uniform"][600]
    assert low <= findings["plateau"]["uniform"][600] <= high
    assert f"{findings['plateau']['uniform'][600]:.0f} [{low:.0f}, {high:.0f}] (N=600)" in text
    kinds, one_seed = text.split("\n95% intervals: ")[1].split("\n", 1)
    assert kinds.startswith("one seed: ") and one_seed.startswith("The demo runs one seed per condition")
