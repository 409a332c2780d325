"""Long curves (a log of every step): reduced to log-step cells, bounded memory, the same phases."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from phasefit.curve import MAX_CELLS, Curve, estimate_noise

ROOT = Path(__file__).resolve().parents[2]
RUN, CORNERS, B, E = 16_000.0, (320.0, 4000.0, 10_400.0), 5.0, 0.5


def broken_line(step: np.ndarray) -> np.ndarray:
    """A fall from 2B to B until t1, the plateau at B until t2, a drop to E until t3, then E:
    straight pieces in log(1 + step) with corners at CORNERS."""
    x = np.log1p(step)
    x1, x2, x3 = np.log1p(CORNERS)
    return np.where(x < x1, B + B * (1 - x / x1),
                    np.where(x < x2, B, np.where(x < x3, B + (E - B) * (x - x2) / (x3 - x2), E)))


def band_crossings() -> np.ndarray:
    """The threshold rules (bands 5%, 2%) and the plateau's end on the noise-free line, solved by hand."""
    x1, x2, x3 = np.log1p(CORNERS)
    t1 = x1 * (1 - 0.05)  # the fall reaches B (1 + 0.05)
    t2 = x2  # the line of the drop meets the plateau's: its corner
    t3 = x2 + (x3 - x2) * 0.98  # the drop reaches E + 0.02 (B - E)
    return np.expm1([t1, t2, t3])


def noisy_curve(n: int, noise: float = 0.01, seed: int = 0) -> Curve:
    step = np.linspace(0, RUN, n) if n > RUN else np.unique(np.round(np.linspace(0, RUN, n)))
    loss = broken_line(step) * (1 + noise * np.random.default_rng(seed).standard_normal(len(step)))
    return Curve.clean(step, loss, B)


def test_reduction_against_hand_computed_cells():
    # 4 cells of width 1 on x = log(1 + step) in [0, 4]: {0, 0.5}, {1.2, 1.9}, {2.1}, {3.2, 3.5, 4}.
    x = np.array([0.0, 0.5, 1.2, 1.9, 2.1, 3.2, 3.5, 4.0])
    loss = np.array([9.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    acc = np.array([0.0, 0.2, np.nan, 0.4, 0.5, 0.6, np.nan, 0.9])
    curve = Curve(np.expm1(x), loss, 5.0, acc, n_steps=100.0)
    cells = curve.reduced(cells=4)
    np.testing.assert_allclose(cells.log_step, [0.25, 1.55, 2.1, (3.2 + 3.5 + 4.0) / 3])
    np.testing.assert_allclose(cells.step, np.expm1(cells.log_step))
    np.testing.assert_allclose(cells.loss, [8.0, 5.5, 4.0, 2.0])
    np.testing.assert_allclose(cells.accuracy, [0.1, 0.4, 0.5, 0.75])  # a missing accuracy does not count
    np.testing.assert_array_equal(cells.weight, [2, 2, 1, 3])
    assert cells.noise == estimate_noise(curve)  # from the rows, not the cells
    assert cells.run_length == 100.0 and cells.baseline == 5.0
    # Reducing again merges by the rows each cell holds, as if from the rows themselves.
    twice = cells.reduced(cells=2)
    np.testing.assert_allclose(twice.loss, [loss[:4].mean(), loss[4:].mean()])
    np.testing.assert_array_equal(twice.weight, [4, 4])
    assert twice.noise == cells.noise
    # Replicate losses go into the same cells; a curve short enough is used as it is.
    losses = np.vstack([loss, 2 * loss])
    np.testing.assert_allclose(curve.reduced_losses(losses, cells=4), [cells.loss, 2 * cells.loss])
    assert curve.reduced() is curve and curve.reduced_losses(losses) is losses


def test_a_long_curve_is_reduced_to_bounded_cells_on_which_a_straight_piece_stays_straight():
    curve = Curve.clean(np.arange(200_001.0), broken_line(np.arange(200_001.0) * RUN / 200_000), B)
    cells = curve.reduced()
    assert len(cells.step) <= MAX_CELLS and cells.weight.sum() == len(curve.step)
    # Cell means of rows on one straight piece lie on it: the plateau's cells sit at B exactly.
    x = cells.log_step
    plateau = (x > np.log1p(CORNERS[0] * 200_000 / RUN) + 0.02) & (x < np.log1p(CORNERS[1] * 200_000 / RUN) - 0.02)
    np.testing.assert_allclose(cells.loss[plateau], B)


def test_a_million_rows_give_the_phases_of_200_rows_or_better():
    from phasefit.detectors import make_detector

    truth = band_crossings()
    for method in ("threshold", "fit", "auto"):
        errors = {}
        for n in (200, 1_000_000):
            found = make_detector(method).fit(noisy_curve(n)).boundaries_.as_array()
            errors[n] = np.abs(found - truth) / RUN
        assert errors[1_000_000].max() < 0.005, (method, errors)  # within 0.5% of the run
        assert errors[1_000_000].max() <= errors[200].max() + 0.002, (method, errors)
    # The changepoint marks the corners themselves.
    found = make_detector("changepoint").fit(noisy_curve(1_000_000)).boundaries_.as_array()
    assert np.abs(found - CORNERS).max() / RUN < 0.02


def test_replicates_of_a_long_curve_are_read_on_the_cells_of_its_fit():
    from phasefit.detectors import ThresholdDetector

    curve = noisy_curve(50_000)
    detector = ThresholdDetector().fit(curve)
    replicates = detector.fit_replicates(curve, np.vstack([curve.loss, curve.loss]))
    np.testing.assert_allclose(replicates, [detector.boundaries_.as_array()] * 2)


MEASURE = """
import resource, subprocess, sys
def limit():  # a guard: the child fails rather than take the machine's memory
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True, preexec_fn=limit)
sys.stderr.write(proc.stderr)
print(proc.stdout)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)  # KiB, of that child alone
sys.exit(proc.returncode)
"""


def test_detect_a_million_row_csv_in_bounded_memory(tmp_path):
    n = 1_000_000
    step = np.arange(n) * (RUN / (n - 1))
    loss = broken_line(step) * (1 + 0.01 * np.random.default_rng(0).standard_normal(n))
    path = tmp_path / "every-step.csv"
    path.write_text("step,loss\n" + "\n".join(map("{:.4f},{:.6g}".format, step.tolist(), loss.tolist())) + "\n")
    # A small fresh interpreter measures its one child: Linux keeps a peak RSS across fork and exec,
    # so a child of this (large) process, or an earlier child, would count this process too.
    proc = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "phasefit.cli", "detect", "--curve",
                           str(path), "--baseline", str(B), "--json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()  # the JSON array, then the peak
    peak = int(lines[-1]) * 1024
    assert peak < 1 << 30, f"peak RSS {peak / 2**20:.0f} MiB"  # measured about 240 MiB; 7 TiB before
    row = json.loads(lines[0])[0]
    found = np.array([row["t1"], row["t2"], row["t3"]])
    assert np.abs(found - band_crossings()).max() / RUN < 0.005, found
    assert np.abs(np.array([row["estimates"]["changepoint"][k] for k in ("t1", "t2", "t3")]) - CORNERS).max() / RUN < 0.02


def test_a_csv_too_large_for_memory_is_one_line(tmp_path, capsys, monkeypatch):
    import pandas as pd

    from phasefit.cli import main

    path = tmp_path / "huge.csv"
    path.write_text("step,loss\n0,8\n10,5\n20,4\n30,3\n")
    real = pd.read_csv

    def short_of_memory(*args, **kwargs):
        if kwargs.get("nrows") == 0:
            return real(*args, **kwargs)
        raise MemoryError
    monkeypatch.setattr(pd, "read_csv", short_of_memory)
    assert main(["detect", "--curve", str(path), "--baseline", "6.8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"phasefit: error: {path}: too large to read into memory") and err.count("\n") == 1, err
    # Memory running out anywhere else is one line too.
    monkeypatch.setattr(pd, "read_csv", real)
    monkeypatch.setattr(Curve, "reduced", lambda self, cells=0: (_ for _ in ()).throw(MemoryError()))
    assert main(["detect", "--curve", str(path), "--baseline", "6.8"]) == 1
    err = capsys.readouterr().err
    assert err == "phasefit: error: out of memory (the input is too large for this machine's memory)\n", err
