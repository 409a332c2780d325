"""The one command line: ``phasefit train | sample | sweep | study | ls | detect | report | demo``.

Every subcommand imports its machinery lazily, so ``phasefit --help`` is instant. Bad input
(configs, paths, stores, curves) ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input, reported as one line rather than a traceback."""
    from logstore import StoreError
    from phasefit.errors import PhasefitError
    from trainer.config import ConfigError

    return (ConfigError, StoreError, PhasefitError, FileNotFoundError, NotADirectoryError)


def cmd_train(args: argparse.Namespace) -> int:
    from trainer.run import train_from_cli

    return train_from_cli(args.config, out=args.out, overrides=args.set, device=args.device, resume=args.resume,
                          restart=args.restart)


def cmd_sample(args: argparse.Namespace) -> int:
    from phasefit.errors import PhasefitError
    from trainer.config import load_config

    if args.n < 1:
        raise PhasefitError(f"-n {args.n}: must be at least 1")
    if not 0 <= args.seed < 2**63:
        raise PhasefitError(f"--seed {args.seed}: must be between 0 and 2**63 - 1")
    config = load_config(args.config, args.set)
    from trainer.sample import format_samples

    print(format_samples(config, n=args.n, seed=args.seed))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from trainer.pool import sweep_from_cli

    return sweep_from_cli(args.sweep, out=args.out, workers=args.workers, scheduler=args.scheduler, device=args.device,
                          pack=args.pack)


def cmd_study(args: argparse.Namespace) -> int:
    from phasefit.study import study_from_cli

    return study_from_cli(args.study, out=args.out, workers=args.workers, scheduler=args.scheduler, device=args.device,
                          pack=args.pack, dry=args.dry_run, png=args.png)


def cmd_ls(args: argparse.Namespace) -> int:
    import pandas as pd

    from phasefit.runs import listing

    table = listing(args.runs_dir)
    if table.empty:
        print(f"no runs in {args.runs_dir}")
        return 0
    cells = [list(table.columns)] + [["-" if pd.isna(v) else str(v) for v in row] for row in table.itertuples(index=False)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from phasefit.commands import detect_runs

    return detect_runs(args.runs_dir, method=args.method, n_boot=args.n_boot, as_json=args.json,
                       scheduler=args.scheduler, curve=args.curve, baseline=args.baseline, workers=args.workers)


def cmd_report(args: argparse.Namespace) -> int:
    from reports.site import report_from_cli

    return report_from_cli(args.runs_dir, out=args.o, png=args.png)


def cmd_demo(args: argparse.Namespace) -> int:
    from phasefit.demo import demo_from_cli

    return demo_from_cli(out=args.out, workers=args.workers)


def path_arg(text: str) -> str:
    """A path argument: an empty one would silently mean the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path")
    return text


def pool_options(p: argparse.ArgumentParser, file: str, out: str) -> None:
    """Where and how a sweep's or a study's runs train."""
    p.add_argument("--out", type=path_arg, default="runs", help=out)
    p.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    p.add_argument("--scheduler", help="address of an existing Dask scheduler")
    p.add_argument("--device", default="auto", help="device for every run (default auto)")
    p.add_argument("--pack", type=int, help=f"train runs that can share a step as packs of at most K (default: the "
                   f"{file}'s pack, else 1 on CPU and 8 on GPUs)", metavar="K")


def build_parser() -> argparse.ArgumentParser:
    from phasefit.detectors import DETECTORS  # the names only: the classes load on use

    parser = argparse.ArgumentParser(prog="phasefit", description="Study how language models learn facts.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one run from a TOML config")
    p.add_argument("config", type=path_arg, help="TOML config (e.g. configs/tiny.toml)")
    p.add_argument("--out", type=path_arg, help="run directory (default runs/<config name>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. train.steps=500")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--restart", action="store_true",
                   help="start the partial run in --out over (its store and checkpoints are deleted): for a run "
                        "stopped before it saved a resume state")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="print biographies exactly as the model sees them")
    p.add_argument("config", type=path_arg)
    p.add_argument("-n", type=int, default=5, help="number of biographies (default 5)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("sweep", help="run a grid of runs locally or on a Dask cluster")
    p.add_argument("sweep", type=path_arg, help="sweep TOML (e.g. configs/sweeps/plateau_vs_n.toml)")
    pool_options(p, "sweep file", "runs folder (default runs/)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("study", help="every experiment of a study, then a verdict per claim")
    p.add_argument("study", type=path_arg, help="study TOML (e.g. configs/studies/tiny.toml)")
    pool_options(p, "study file", "runs folder (default runs/; the study goes in OUT/NAME)")
    p.add_argument("--dry-run", action="store_true", help="list the runs, packs and estimated time; train nothing")
    p.add_argument("--png", action="store_true", help="also write PNG images of the report's charts")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("ls", help="list runs, their conditions and state")
    p.add_argument("runs_dir", type=path_arg)
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("detect", help="measure phases per run, plus cross-run statistics")
    p.add_argument("runs_dir", type=path_arg, nargs="*", help="run directories or folders of runs")
    p.add_argument("--json", action="store_true", help="print one JSON array instead of a table")
    p.add_argument("--method", default="auto", help=f"detector: {', '.join(DETECTORS)} (default auto)")
    p.add_argument("--scheduler", help="address of a Dask scheduler to fan out the per-run work")
    p.add_argument("--curve", type=path_arg, help="CSV with step and loss columns (optionally accuracy) from any trainer")
    p.add_argument("--baseline", type=float, help="no-knowledge loss in nats, for --curve")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap replicates over individuals (default 200; 0: no intervals, else at least 20)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes for many runs (default 1)")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("report", help="write the static report site")
    p.add_argument("runs_dir", type=path_arg)
    p.add_argument("-o", type=path_arg, help="output folder (default RUNS_DIR/report)")
    p.add_argument("--png", action="store_true", help="also write PNG images of every chart")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="the main job: a small CPU sweep, detect, report")
    p.add_argument("--out", type=path_arg, default="demo", help="output folder (default demo/)")
    p.add_argument("--workers", type=int, default=2, help="local worker processes (default 2)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("phasefit: interrupted", file=sys.stderr)
        return 130
    except MemoryError:  # whatever ran out: one line, never a traceback
        print("phasefit: error: out of memory (the input is too large for this machine's memory)", file=sys.stderr)
        return 1
    except Exception as err:
        if isinstance(err, _user_errors()):
            print(f"phasefit: error: {err}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
