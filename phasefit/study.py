"""``phasefit study STUDY.toml``: every experiment of the study, then a verdict per claim.

The study file (trainer/study.py, configs/studies/) names its experiments; they train as one
pool of runs (a sweep's: idempotent, resumable, packed where runs can share a step) into
``OUT/STUDY/EXPERIMENT/RUN``. Then each experiment's runs are detected (``phasefit detect``'s
files beside them), ``phasefit.claims`` gives the seven verdicts, written to
``OUT/STUDY/claims.json`` and printed, and the report goes to ``OUT/STUDY/report``.
``--dry-run`` lists the experiments, runs and packs with an estimate of the time, and
trains nothing.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


CLAIMS_FILE = "claims.json"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def dry_run(study, workers: int, device: str, pack: int | None) -> int:
    """Print the study's plan: per experiment its runs, packs and estimated time; in all, the
    estimated wall time with ``workers`` at a time."""
    from trainer.pool import default_pack, pack_runs
    from trainer.run import resolve_device
    from trainer.study import estimate_seconds

    dev = resolve_device(device)
    size = pack or study.pack or default_pack(dev.type)
    print(f"study {study.name} ({study.source}): {len(study.experiments)} experiments into {study.folder}/; "
          f"packs of at most {size} on {dev.type}")
    print("estimating: a few training steps and probes of each model shape on this machine", flush=True)
    seconds = estimate_seconds(study.all_runs().runs, dev, progress=print)
    total = 0.0
    print(f"\n{'experiment':<16} {'runs':>5} {'packs':>6} {'estimated':>11}")
    for name, sweep in study.experiments.items():
        packs = pack_runs(sweep.runs, size)
        # A pack's members share each step: it costs about its slowest member, not their sum.
        cost = sum(max(seconds[f"{name}/{r.name}"] for r in p) for p in packs)
        total += cost
        print(f"{name:<16} {len(sweep.runs):>5} {len(packs):>6} {_minutes(cost):>11}")
        for p in packs if size > 1 else []:
            print(f"    pack: {' + '.join(r.name for r in p)}")
    n_runs = sum(len(s.runs) for s in study.experiments.values())
    print(f"{'in all':<16} {n_runs:>5} {'':>6} {_minutes(total):>11} of training; about {_minutes(total / workers)} "
          f"with {workers} worker{'s' * (workers != 1)} (estimated, not measured: packs are assumed to cost their "
          f"slowest member; runs that start from another wait for it)")
    return 0


def analyse_study(study, workers: int = 1, n_boot: int = 200) -> dict[str, list[dict]]:
    """Detect every experiment's runs (writing ``phasefit detect``'s files); experiment -> dicts."""
    from phasefit.commands import analyse_and_write, named_runs

    found = {}
    for name, sweep in study.experiments.items():
        if not sweep.folder.is_dir():
            found[name] = []
            continue
        warn: list[str] = []
        found[name], _ = analyse_and_write(named_runs([str(sweep.folder)]), "auto", n_boot, None, workers, warn)
        for line in warn:
            print(f"phasefit: warning: {line}", file=sys.stderr)
    return found


def write_claims(study, claims, level: float) -> Path:
    from phasefit.commands import json_default

    path = study.folder / CLAIMS_FILE
    doc = {"study": study.name, "source": str(study.source), "level": level,
           "experiments": {name: len(s.runs) for name, s in study.experiments.items()},
           "claims": [c.to_dict() for c in claims]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=json_default) + "\n")
    return path


def study_from_cli(path: str, out: str | None = "runs", workers: int = 1, scheduler: str | None = None,
                   device: str = "auto", pack: int | None = None, dry: bool = False, png: bool = False) -> int:
    """Entry point of ``phasefit study``: 0 when every run completed and the claims were
    judged (whichever way they came out), 1 when a run failed (the claims are judged on the
    others), 130 when interrupted (run the same command again to continue)."""
    from trainer.pool import check_options, run_sweep, summarise
    from trainer.run import stop_on_sigterm
    from trainer.study import load_study

    out = out or "runs"
    check_options(out, workers, pack)
    study = load_study(path, out)
    if dry:
        return dry_run(study, workers, device, pack)
    start = time.perf_counter()
    stop_on_sigterm()
    sweep = study.all_runs()
    outcomes = run_sweep(sweep, workers=workers, scheduler=scheduler, device=device, pack=pack)
    print(summarise(sweep, outcomes), flush=True)
    if any(o.status == "interrupted" for o in outcomes):
        print(f"phasefit: study interrupted; continue with: phasefit study {path} --out {out}")
        return 130

    from phasefit.claims import LEVEL, format_claims, study_claims

    print("\ndetecting every experiment's runs (phasefit detect's files go beside them)", flush=True)
    claims = study_claims(analyse_study(study, workers), LEVEL)
    written = write_claims(study, claims, LEVEL)
    print(f"\nclaims of the study ({LEVEL:.0%} intervals across seeds; rules in docs/study.md, \"Verdicts\"):\n"
          + format_claims(claims), flush=True)
    report = None
    try:
        from reports.site import report_from_cli
    except ImportError as err:  # the reports package is optional for the verdicts
        print(f"phasefit study: no report ({err})", file=sys.stderr)
    else:
        print(flush=True)
        report_from_cli(str(study.folder), out=str(study.folder / "report"), png=png)
        report = study.folder / "report" / "index.html"
    print(f"\nphasefit study: done in {time.perf_counter() - start:.0f} s; claims: {written}"
          + (f"; report: {report}" if report else ""))
    return 1 if any(o.status != "complete" for o in outcomes) else 0
