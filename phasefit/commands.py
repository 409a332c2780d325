"""``phasefit detect``: phases of every run named, files beside them, cross-run statistics.

For each run: ``phases.json`` in the run folder. For each folder of runs named:
``phases.csv`` (one row per run) and, when its runs vary N, alpha or the sampling
condition, or repeat seeds, ``crossrun.json``; when some condition has two seeds or more,
``conditions.csv`` (one row per condition, its intervals across seeds). On the terminal,
that table of conditions first (when some condition has seeds), then the table of runs
(or, with --json, one JSON array of the per-run objects) and the cross-run fits. A run that cannot be read or
analysed becomes a row whose notes say why; the exit code is then 1. Bad arguments (no such
folder, unreadable curve file, unknown method) raise PhasefitError: one line, exit code 2.

The way of a run: ``analyse_run`` opens its store (``phasefit.runs``) and calls
``phasefit.analyse`` (the phases, then the intervention measures its kind calls for); the
results are written and shown here.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from phasefit.detectors import DETECTORS
from phasefit.errors import PhasefitError


def analyse_run(path: str, name: str, method: str = "auto", n_boot: int = 200, seed: int = 0) -> dict:
    """Open and analyse one run; its ``Phases.to_dict()``, or a failed row naming the problem.

    A top-level function so that Dask workers (``--scheduler``) and process pools can run it.
    """
    from logstore import StoreError
    from phasefit.analysis import analyse
    from phasefit.runs import open_run

    try:
        ds = open_run(path)
    except (StoreError, PhasefitError, OSError, ValueError, KeyError) as err:
        return _failed(name, method, f"unreadable store: {err}")
    try:
        out = analyse(ds, method, run=name, n_boot=n_boot, seed=seed).to_dict()
    except StoreError as err:
        return _failed(name, method, f"unreadable store: {err}")
    except Exception as err:  # one run's problem must not stop the analysis of a sweep
        return _failed(name, method, f"analysis failed: {type(err).__name__}: {err}")
    return out


def _failed(name: str, method: str, note: str) -> dict:
    from phasefit.phases import Phases

    out = Phases(run=name, status="failed", method=method, complete=False, notes=[note]).to_dict()
    out["error"] = note
    return out


def named_runs(paths: list[str]) -> list[tuple[str, Path, Path | None]]:
    """(name, run path, folder of runs or None) for every run the arguments name."""
    from logstore.runs import find_runs
    from phasefit.runs import is_run, run_folder

    found = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise PhasefitError(f"{path}: no such run or folder")
        if not path.is_dir():
            raise PhasefitError(f"{path}: not a folder (a run folder holds metrics.zarr)")
        path = run_folder(path)  # a run's store names its run (phases.json goes beside the store)
        if is_run(path) or path.suffix == ".zarr":
            found.append((path.name, path, None))
            continue
        for name, run in find_runs(path).items():
            found.append((name, run.with_suffix("") if run.suffix == ".zarr" else run, path))
    unique = {}  # a run named twice (a folder and one of its runs, the same folder twice) counts once
    for name, path, folder in found:
        unique.setdefault(path.resolve(), (name, path, folder))
    if len(unique) < len(found):
        print(f"phasefit: note: {len(found) - len(unique)} runs named more than once are analysed once", file=sys.stderr)
    return list(unique.values())


def _analyse_all(runs, method: str, n_boot: int, scheduler: str | None, workers: int = 1) -> list[dict]:
    if scheduler:
        try:
            from distributed import Client
        except ImportError:
            raise PhasefitError("--scheduler needs the 'distributed' package") from None
        try:
            client = Client(scheduler, timeout="15s")
        except (OSError, TimeoutError, ValueError) as err:
            raise PhasefitError(f"--scheduler {scheduler}: cannot connect ({err})") from None
        with client:
            futures = client.map(analyse_run, [str(p) for _, p, _ in runs], [n for n, _, _ in runs],
                                 method=method, n_boot=n_boot, pure=False)
            results = []
            for (name, _, _), future in zip(runs, futures):
                try:
                    results.append(future.result())
                except Exception as err:  # a worker lost, a task killed
                    results.append(_failed(name, method, f"analysis failed on the cluster: {type(err).__name__}: {err}"))
            return results
    if workers > 1 and len(runs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: a fresh interpreter per worker, safe whatever threads this process holds
        with ProcessPoolExecutor(min(workers, len(runs)), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(analyse_run, str(path), name, method, n_boot) for name, path, _ in runs]
            results = []
            for (name, _, _), future in zip(runs, futures):
                try:
                    results.append(future.result())
                except Exception as err:  # a worker killed (out of memory, a signal)
                    results.append(_failed(name, method, f"analysis failed in a worker: {type(err).__name__}: {err}"))
            return results
    return [analyse_run(str(path), name, method, n_boot) for name, path, _ in runs]


def _write(path: Path, text: str, warn: list[str]) -> None:
    try:
        path.write_text(text)
    except OSError as err:
        warn.append(f"could not write {path}: {err.strerror or err}")


MIN_BOOT = 20  # fewer replicates cannot place a 95% interval's ends
METHODS = tuple(DETECTORS)


def detect_runs(paths: list[str], *, method: str = "auto", n_boot: int = 200, as_json: bool = False,
                scheduler: str | None = None, curve: str | None = None, baseline: float | None = None,
                workers: int = 1) -> int:
    """``phasefit detect PATHS...``: analyse every run below ``paths`` (and the CSV ``curve``
    with its ``baseline``), print the table (or, ``as_json``, one JSON array), write the files
    (see the module docstring); returns the exit code. Runs fan out over the Dask
    ``scheduler`` or ``workers`` local processes."""
    paths = list(paths)
    if method not in METHODS:
        raise PhasefitError(f"--method {method}: unknown (choose from {', '.join(METHODS)})")
    if n_boot < 0 or 0 < n_boot < MIN_BOOT:
        raise PhasefitError(f"--n-boot {n_boot}: use 0 (no intervals) or at least {MIN_BOOT} replicates "
                            "for a 95% interval")
    if workers < 1:
        raise PhasefitError(f"--workers {workers}: must be at least 1")
    if baseline is not None and not curve:
        raise PhasefitError("--baseline goes with --curve FILE.csv (a store carries its own baseline)")
    if not paths and not curve:
        raise PhasefitError("nothing to analyse: give RUNS_DIR... or --curve FILE.csv --baseline B")
    for raw in paths:  # before the heavy imports: a typo answers at once
        if not Path(raw).exists():
            raise PhasefitError(f"{raw}: no such run or folder")
    if curve and baseline is None:
        raise PhasefitError(f"{curve}: --curve needs --baseline (the no-knowledge loss in nats)")

    results: list[dict] = []
    warn: list[str] = []
    if curve:
        from phasefit.curve import Curve
        from phasefit.phases import detect

        results.append(detect(Curve.from_csv(curve, baseline), method, run=Path(curve).name).to_dict())

    runs = named_runs(paths)
    if paths and not runs:
        print(f"phasefit: no runs in {', '.join(paths)}", file=sys.stderr)
    run_results, stats = analyse_and_write(runs, method, n_boot, scheduler, workers, warn)
    results.extend(run_results)

    if as_json:
        print(json.dumps([{k: v for k, v in r.items() if k != "error"} for r in results], default=json_default))
    else:
        if stats is not None and stats.has_seeds():  # the headline: the conditions, across seeds
            print("conditions (95% intervals across seeds where a condition has two or more):\n"
                  + stats.format_conditions() + "\n\nruns (each interval from one seed):")
        print(format_table(results))
        if stats is not None and not stats.empty():
            print("\ncross-run:\n" + stats.format())
    for line in warn:
        print(f"phasefit: warning: {line}", file=sys.stderr)
    return 1 if any("error" in r for r in results) else 0


def analyse_and_write(runs, method: str = "auto", n_boot: int = 200, scheduler: str | None = None, workers: int = 1,
                      warn: list[str] | None = None):
    """Analyse ``runs`` (``named_runs``'s (name, path, folder) triples) and write their files: each
    run's phases.json, each folder's phases.csv, crossrun.json and conditions.csv. Returns the
    per-run dicts and the cross-run statistics of them all (None for fewer than 2 runs);
    files that cannot be written are named in ``warn``."""
    from phasefit.analysis import phases_table
    from phasefit.conditions import to_csv as conditions_csv
    from phasefit.crossrun import crossrun

    warn = [] if warn is None else warn
    run_results = _analyse_all(runs, method, n_boot, scheduler, workers) if runs else []
    for (name, path, _), result in zip(runs, run_results):
        _write(path / "phases.json", json.dumps(result, indent=1, default=json_default) + "\n", warn)
    folders = {}
    for (name, path, folder), result in zip(runs, run_results):
        if folder is not None:
            folders.setdefault(folder, []).append(result)
    stats = crossrun(run_results) if len(run_results) > 1 else None
    for folder, rows in folders.items():
        _write(folder / "phases.csv", phases_table(rows).to_csv(index=False), warn)
        here = stats if len(rows) == len(run_results) else crossrun(rows)
        if here is not None and not here.empty():
            _write(folder / "crossrun.json", json.dumps(here.to_dict(), indent=1, default=json_default) + "\n", warn)
        if here is not None and here.has_seeds():
            _write(folder / "conditions.csv", conditions_csv(here.conditions), warn)
    return run_results, stats


def json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _steps(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def _interval(value, ci) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" + (f" [{ci[0]:.0f}, {ci[1]:.0f}]" if ci else "")


def _intervention_cells(r: dict, results: list[dict]) -> dict:
    """Columns for the intervention runs, shown when some run of the table is one."""
    cells = {}
    if any(x.get("finetune") for x in results):
        f = r.get("finetune") or {}
        depth = f.get("collapse_depth")
        cells.update({"collapse step [95% CI]": _interval(f.get("collapse_step"), f.get("collapse_step_ci")),
                      "depth": "-" if depth is None else f"{depth:.3f}",
                      "new acq [95% CI]": _interval(f.get("new_acquisition_step"), f.get("new_acquisition_step_ci"))})
    if any(x.get("patching") for x in results):
        p = r.get("patching") or {}
        cells["t2 - reference [95% CI]"] = _interval(p.get("t2_difference"), p.get("t2_difference_ci"))
    if any(x.get("sequential") for x in results):
        q = r.get("sequential") or {}
        cells["learn / forget steps"] = f"{_steps(q.get('median_learn_steps'))} / {_steps(q.get('median_forget_steps'))}" if q else "-"
    return cells


def format_table(results: list[dict]) -> str:
    """The terminal table: one row per run, then the notes of each run."""
    import pandas as pd

    from phasefit.runs import describe, varying

    if not results:
        return "no runs analysed"
    conds = [r.get("conditions") or {} for r in results]
    keys = varying(conds) or [k for k in ("N", "sampling") if any(k in c for c in conds)]
    rows = []
    for r, c in zip(results, conds):
        acc = r.get("final_accuracy")
        rows.append({
            "run": r["run"], "conditions": describe(c, keys) or "-", "status": r.get("status", "-"),
            "t1": _steps(r.get("t1")), "t2 [95% CI]": _interval(r.get("t2"), r.get("t2_ci")),
            "plateau [95% CI]": _interval(r.get("plateau_length"), r.get("plateau_ci")),
            "t3": _steps(r.get("t3")), "final acc": "-" if acc is None else f"{acc:.3f}",
            "halluc onset": _steps(r.get("hallucination_onset")),
            **_intervention_cells(r, results),
        })
    text = pd.DataFrame(rows).to_string(index=False)
    notes = [f"  {r['run']}: {note}" for r in results for note in (r.get("notes") or [])]
    method = ", ".join(sorted({str(r.get("method")) for r in results}))
    kinds = sorted({r["ci_kind"] for r in results if r.get("ci_kind")})
    intervals = f"; 95% CI: {', '.join(kinds)}" if kinds else ""
    return text + f"\n(steps; method: {method}{intervals})" + ("\nnotes:\n" + "\n".join(notes) if notes else "")
