"""``phasefit demo``: the whole pipeline in a few minutes on a CPU.

A small sweep (configs/demo.toml: the tiny world at three population sizes, uniform and
power-law sampling), then ``phasefit detect`` on its runs, then ``phasefit report``. It prints
the phase table, the two findings of the study it reproduces, measured on these runs (the
plateau grows with N; it is shorter under a power law) with their intervals and what those
resample, and the path of the report. It runs one seed per condition to stay a few minutes
long, and says so: its intervals are one run's, blind to seed-to-seed spread (a study sweep
runs three seeds, configs/sweeps/).

Everything is computed here, on this machine: run it twice into the same folder and the
second time skips the training (the sweep's complete runs) and recomputes the rest.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from phasefit.errors import PhasefitError

DEMO_SWEEP = Path(__file__).resolve().parents[1] / "configs" / "demo.toml"


def plateau_findings(runs_dir: Path) -> dict:
    """The demo's two claims, read from the phases.json that ``detect`` wrote in every run.

    Returns {"plateau": {kind: {N: plateau length in steps or None}}, "plateau_ci": {kind:
    {N: [low, high] or None}}, "ci_kinds": [what the intervals resample], "grows_with_n":
    {kind: bool}, "shorter_under_power_law": {N: bool}}. A missing plateau counts as failing.
    """
    plateau: dict[str, dict[int, float | None]] = {}
    interval: dict[str, dict[int, list | None]] = {}
    kinds = set()
    for phases in sorted(Path(runs_dir).rglob("phases.json")):
        result = json.loads(phases.read_text())
        conditions = result.get("conditions") or {}
        if "sampling" in conditions and "N" in conditions:  # a run that could not be read has none
            kind, n = conditions["sampling"], conditions["N"]
            plateau.setdefault(kind, {})[n] = result.get("plateau_length")
            interval.setdefault(kind, {})[n] = result.get("plateau_ci")
            kinds.update([result["ci_kind"]] if result.get("ci_kind") else [])
    grows = {}
    for kind, by_n in plateau.items():
        values = [by_n[n] for n in sorted(by_n)]
        grows[kind] = all(v is not None for v in values) and all(a < b for a, b in zip(values, values[1:]))
    shorter = {}
    for n, uniform in plateau.get("uniform", {}).items():
        power = plateau.get("power_law", {}).get(n)
        shorter[n] = uniform is not None and power is not None and power < uniform
    return {"plateau": plateau, "plateau_ci": interval, "ci_kinds": sorted(kinds), "grows_with_n": grows,
            "shorter_under_power_law": shorter}


def _steps(v, ci=None) -> str:
    return "none" if v is None else f"{v:.0f}" + (f" [{ci[0]:.0f}, {ci[1]:.0f}]" if ci else "")


def format_findings(f: dict) -> str:
    lines = []
    ci = f["plateau_ci"]
    for kind, by_n in f["plateau"].items():
        series = " < ".join(f"{_steps(by_n[n], ci[kind][n])} (N={n})" for n in sorted(by_n))
        verdict = "yes" if f["grows_with_n"][kind] else "NO"
        lines.append(f"plateau grows with N, {kind}: {verdict}: {series} steps")
    for n in sorted(f["shorter_under_power_law"]):
        u, p = f["plateau"]["uniform"][n], f["plateau"].get("power_law", {}).get(n)
        p_ci = ci.get("power_law", {}).get(n)
        verdict = "yes" if f["shorter_under_power_law"][n] else "NO"
        lines.append(f"shorter under the power law, N={n}: {verdict}: {_steps(p, p_ci)} versus "
                     f"{_steps(u, ci['uniform'][n])} steps uniform")
    kinds = "; ".join(f["ci_kinds"]) or "none (no bootstrap)"
    one_seed = f["ci_kinds"] and all(k.startswith("one seed") for k in f["ci_kinds"])
    lines.append(f"95% intervals: {kinds}")
    if one_seed:
        lines.append("The demo runs one seed per condition (configs/demo.toml), so each finding is one training "
                     "run's:\nits intervals cannot show seed-to-seed spread.")
    return "\n".join(lines)


def demo_from_cli(out: str | None = "demo", workers: int = 2) -> int:
    """Entry point of ``phasefit demo``: 0 when every run completed and was analysed (the findings are
    printed, whichever way they come out), 1 when a run failed, 130 when interrupted."""
    from trainer.pool import run_sweep, summarise
    from trainer.sweep import load_sweep

    if workers < 1:
        raise PhasefitError(f"--workers {workers}: must be at least 1")
    if not DEMO_SWEEP.exists():
        raise PhasefitError(f"{DEMO_SWEEP}: the demo's sweep file is missing (phasefit demo runs from a source checkout)")
    start = time.perf_counter()
    out = Path(out or "demo")
    runs_dir = out / "runs"
    sweep = load_sweep(DEMO_SWEEP, runs_dir)
    print(f"phasefit demo: {len(sweep.runs)} runs of the tiny world ({DEMO_SWEEP.name}) on the CPU, {workers} at a time, "
          f"then detect and report, into {out}/", flush=True)
    outcomes = run_sweep(sweep, workers=workers, device="cpu")
    print(summarise(sweep, outcomes), flush=True)
    if any(o.status != "complete" for o in outcomes):
        print("phasefit demo: some runs did not complete (see sweep.log in their folders)", file=sys.stderr)
        return 1 if all(o.status != "interrupted" for o in outcomes) else 130

    from phasefit.commands import detect_runs

    print("\nphases (phasefit detect):", flush=True)
    detect_runs([str(sweep.folder)], method="auto", n_boot=200, workers=workers)
    findings = plateau_findings(sweep.folder)
    print("\n" + format_findings(findings), flush=True)

    report = None
    try:
        from reports.site import report_from_cli
    except ImportError as err:  # the reports package is optional for the demo's numbers
        print(f"phasefit demo: no report ({err})", file=sys.stderr)
    else:
        print(flush=True)
        report_from_cli(str(sweep.folder), out=str(out / "report"))
        report = out / "report" / "index.html"
    print(f"\nphasefit demo: done in {time.perf_counter() - start:.0f} s; runs in {sweep.folder}"
          + (f"; report: {report}" if report else ""))
    return 0
