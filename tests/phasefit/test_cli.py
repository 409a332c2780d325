"""``phasefit detect`` from the command line: tables, JSON, files, bad input, a Dask cluster."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from logstore import open_run
from logstore.durable import WriterLock
from phasefit.cli import main
from phasefit.simulate import simulate, to_store
from tests.helpers import run_cli


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """A folder of small runs: two seeds at N=300, one at N=600, one still running, one corrupt."""
    root = tmp_path_factory.mktemp("runs")
    for name, n, seed in (("n300-s0", 300, 0), ("n300-s1", 300, 1), ("n600-s0", 600, 0)):
        to_store(simulate(n_individuals=n, n_heldout=30, seed=seed), root / name)
    to_store(simulate(n_individuals=300, n_heldout=30, seed=5), root / "live", status="running", committed=100)
    writing = WriterLock(root / "live" / "metrics.zarr")  # as its trainer would, while it runs
    writing.acquire()
    broken = to_store(simulate(n_individuals=100, n_heldout=10, seed=6), root / "broken")
    for chunk in (broken / "metrics.zarr" / "loss").rglob("c*"):
        if chunk.is_file():
            chunk.write_bytes(b"garbage")
    yield root
    writing.release()


def test_detect_json_table_and_files(runs_dir):
    proc = run_cli("detect", str(runs_dir), "--json", "--n-boot", "40")
    assert proc.returncode == 1, proc.stderr  # the corrupt run is reported, and flagged by the exit code
    assert "Traceback" not in proc.stderr
    rows = {r["run"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == {"n300-s0", "n300-s1", "n600-s0", "live", "broken"}
    for name in ("n300-s0", "n300-s1", "n600-s0"):
        r = rows[name]
        assert r["status"] == "complete" and abs(r["t2"] - 4000) < 320 and len(r["t2_ci"]) == 2
        assert (runs_dir / name / "phases.json").exists()
    assert rows["live"]["status"] == "running" and rows["live"]["notes"][0].startswith("incomplete")
    assert rows["broken"]["status"] == "failed" and "unreadable store" in rows["broken"]["notes"][0]
    table = pd.read_csv(runs_dir / "phases.csv")
    assert set(table["run"]) == set(rows) and {"t2_lo", "t2_hi", "plateau_length", "cond_N"} <= set(table.columns)
    cross = json.loads((runs_dir / "crossrun.json").read_text())
    assert cross["seeds"] and any("not complete" in n for n in cross["notes"])



def test_detect_table_for_named_runs(runs_dir, capsys):
    assert main(["detect", str(runs_dir / "n300-s0"), str(runs_dir / "n600-s0"), "--n-boot", "20"]) == 0
    out = capsys.readouterr().out
    assert "t2 [95% CI]" in out and "N=300" in out and "N=600" in out and "halluc onset" in out
    assert out.lstrip().startswith("run") and "across seeds" not in out  # one seed per condition: the runs' table only


def test_detect_leads_with_the_conditions_across_seeds(runs_dir, capsys):
    assert main(["detect", str(runs_dir), "--n-boot", "20"]) == 1  # the corrupt run
    out = capsys.readouterr().out
    assert out.startswith("conditions (95% intervals across seeds")
    conditions, runs = out.split("runs (each interval from one seed):")
    lines = conditions.splitlines()
    assert lines[1].split()[:2] == ["conditions", "seeds"] and "halluc lag [95% CI]" in lines[1]
    assert lines[2].split()[:2] == ["N=300", "2"] and lines[3].split()[:2] == ["N=600", "1"]
    assert "seeds: t interval over 2 seeds' estimates" in conditions
    assert "n300-s1" in runs and "95% CI: one seed:" in runs
    table = pd.read_csv(runs_dir / "conditions.csv")
    assert list(table["n_seeds"]) == [2, 1] and table["runs"][0] == "n300-s0; n300-s1"
    assert table["ci_kind"][0] == "seeds: t interval over 2 seeds' estimates" and table["ci_kind"][1].startswith("one seed")
    assert table["t2_lo"][0] < table["t2"][0] < table["t2_hi"][0]
    rows = json.loads((runs_dir / "crossrun.json").read_text())["conditions"]
    assert [r["ci_kind"] for r in rows] == list(table["ci_kind"])


def test_detect_a_csv_curve_from_another_trainer(tmp_path, capsys):
    from phasefit.summary import population_curves, split_curve

    ds = simulate(n_individuals=400, n_heldout=10, seed=3)
    curve = split_curve(ds, population_curves(ds))
    path = tmp_path / "log.csv"
    pd.DataFrame({"step": curve.step, "loss": curve.loss, "accuracy": curve.accuracy}).to_csv(path, index=False)
    assert main(["detect", "--curve", str(path), "--baseline", str(curve.baseline), "--json", "--method", "fit"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["run"] == "log.csv" and row["method"] == "fit" and abs(row["t2"] - 4000) < 320
    assert row["final_accuracy"] == pytest.approx(curve.accuracy[-1], rel=1e-4)


@pytest.mark.parametrize("args,message", [
    (["detect", "/no/such/dir"], "/no/such/dir: no such run or folder"),
    (["detect", "--curve", "x.csv"], "--curve needs --baseline"),
    (["detect", "--method", "magic", "."], "--method magic: unknown"),
    (["detect"], "nothing to analyse"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and message in err and err.startswith("phasefit: error: ")


def test_bad_csv_and_empty_folder(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("when,value\n1,2\n")
    assert main(["detect", "--curve", str(bad), "--baseline", "6.8"]) == 2
    assert "no 'step' column" in capsys.readouterr().err
    good = tmp_path / "good.csv"
    good.write_text("step,loss\n0,8\n10,5\n20,5\n30,1\n")
    for baseline in ("nan", "-1", "0", "inf", "1e200"):  # a no-knowledge loss is finite and positive
        assert main(["detect", "--curve", str(good), "--baseline", baseline]) == 2
        err = capsys.readouterr().err
        assert err.strip().count("\n") == 0 and "the baseline must be a no-knowledge loss above 0 and below" in err
    # Values no training run gives are named, with the row or step; so is a folder for a file.
    for rows, message in [("0,8\n10,5\n10,5\n20,1", "a step given twice at step 10"),
                          ("0,8\n0,8\n0,8", "a step given twice at step 0"),
                          ("-10,8\n0,5\n10,1", "a negative step at step -10"),
                          ("0,8\n10,-1", "a negative loss (a cross-entropy is >= 0) at step 10"),
                          ("0,8\n10,five", "'loss' is not a number in row 3: 'five'")]:
        bad.write_text("step,loss\n" + rows + "\n")
        assert main(["detect", "--curve", str(bad), "--baseline", "6.8"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"phasefit: error: {bad}: {message}") and err.count("\n") == 1, err
    bad.write_text("step,loss,accuracy\n0,8,0\n10,5,5.0\n")
    assert main(["detect", "--curve", str(bad), "--baseline", "6.8"]) == 2
    assert "an accuracy outside [0, 1] at step 10 (accuracy 5)" in capsys.readouterr().err
    assert main(["detect", "--curve", str(tmp_path), "--baseline", "6.8"]) == 2
    assert f"{tmp_path}: a folder, not a CSV file" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["detect", str(empty), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == [] and "no runs in" in captured.err


def test_scheduler_fans_the_runs_out_over_a_dask_cluster(runs_dir, tmp_path):
    from distributed import LocalCluster

    from phasefit.commands import detect_runs

    folder = tmp_path / "two"
    for name in ("n300-s0", "n600-s0"):
        shutil.copytree(runs_dir / name, folder / name)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        assert detect_runs([str(folder)], as_json=True, method="threshold", scheduler=cluster.scheduler_address,
                           n_boot=20) == 0
    local = json.loads((folder / "n300-s0" / "phases.json").read_text())
    assert local["method"] == "threshold" and local["t2"] == pytest.approx(
        json.loads((runs_dir / "n300-s0" / "phases.json").read_text())["estimates"]["threshold"]["t2"])
    assert np.isfinite(local["t2_ci"]).all()


def test_ls_lists_runs_with_state_and_conditions(runs_dir):
    proc = run_cli("ls", str(runs_dir))
    assert proc.returncode == 0, proc.stderr
    header, *lines = proc.stdout.splitlines()
    assert header.split() == ["run", "status", "steps", "last_step", "conditions"]
    rows = {line.split()[0]: line for line in lines}
    assert set(rows) == {"n300-s0", "n300-s1", "n600-s0", "live", "broken"}  # ls reads metadata only
    assert rows["live"].split()[1] == "running" and rows["n300-s0"].split()[1] == "complete"
    assert "N=600" in rows["n600-s0"] and "seed=1" in rows["n300-s1"]
    assert rows["n300-s0"].split()[3] == str(int(open_run(runs_dir / "n300-s0").step.values[-1]))
    assert run_cli("ls", str(runs_dir / "nowhere")).returncode == 2


def test_detect_names_a_store_by_its_run_and_each_run_once(runs_dir, tmp_path):
    for name in ("n300-s0", "n600-s0"):
        shutil.copytree(runs_dir / name, tmp_path / "runs" / name)
    store = tmp_path / "runs" / "n300-s0" / "metrics.zarr"
    proc = run_cli("detect", str(store), "--json", "--n-boot", "0")
    assert proc.returncode == 0, proc.stderr
    assert [r["run"] for r in json.loads(proc.stdout)] == ["n300-s0"]
    assert (store.parent / "phases.json").exists() and not (store / "phases.json").exists()

    # The same folder twice, and one of its runs again: two runs, not five "seeds".
    proc = run_cli("detect", str(tmp_path / "runs"), str(tmp_path / "runs"), str(store.parent), "--json",
                   "--n-boot", "0")
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["run"] for r in json.loads(proc.stdout)) == ["n300-s0", "n600-s0"]
    assert "3 runs named more than once are analysed once" in proc.stderr
    assert len(pd.read_csv(tmp_path / "runs" / "phases.csv")) == 2


@pytest.mark.parametrize("args, message", [
    (["detect", "{runs}", "--n-boot", "2"], "--n-boot 2: use 0 (no intervals) or at least 20 replicates"),
    (["detect", ""], "argument runs_dir: an empty path"),
    (["report", "{runs}", "-o", ""], "argument -o: an empty path"),
    (["ls", ""], "argument runs_dir: an empty path"),
])
def test_empty_paths_and_too_few_replicates_are_refused(runs_dir, tmp_path, args, message):
    proc = run_cli(*[a.format(runs=runs_dir) for a in args], cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing written in the current folder


def test_ls_shows_an_unreadable_runs_problem_in_the_last_column(runs_dir, tmp_path):
    (tmp_path / "good").symlink_to(runs_dir / "n300-s0")
    (tmp_path / "bad" / "metrics.zarr").mkdir(parents=True)
    (tmp_path / "bad" / "config.toml").write_text("not toml [")
    proc = run_cli("ls", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    header, *lines = proc.stdout.splitlines()
    assert header.split() == ["run", "status", "steps", "last_step", "conditions", "problem"]
    rows = {line.split()[0]: line for line in lines}
    assert rows["bad"].split()[1] == "unreadable" and rows["bad"].rstrip().endswith("(no zarr.json)")
    assert "N=300" in rows["good"] and rows["good"].split()[-1] == "-"
