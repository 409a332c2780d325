"""Seeds as the unit of inference: one row per condition, with its headline estimates.

A condition is a group of runs that differ only by seed (``crossrun`` groups them). With two
seeds or more, each quantity's headline is the mean of its seeds' estimates and the t interval
over them (``bootstrap.seed_interval``). A seed's estimate carries all of its run's noise
(training, evaluation, the sample of individuals), so the spread between seeds holds that
noise and the seed-to-seed variation at once. A hierarchical bootstrap (seeds, then
individuals within a seed) covered the condition's value less often at 2, 3 and 5 seeds
(``benchmarks/bench_seed_intervals.py``; docs/phasefit.md, "Across runs"). With one seed the
row is the run's own estimate and interval, labelled with the run's ``ci_kind``
("one seed: ...").
"""

from __future__ import annotations

import pandas as pd

from phasefit.bootstrap import seed_interval
from phasefit.runs import describe, varying

HEADLINE = ("t1", "t2", "t3", "plateau_length", "final_accuracy", "hallucination_onset", "hallucination_lag")
# The intervention measures of a run (its section of ``Phases``, the key there), summarised
# across seeds like the phases.
INTERVENTION = {"finetune_collapse_step": ("finetune", "collapse_step"),
                "finetune_collapse_depth": ("finetune", "collapse_depth"),
                "finetune_new_acquisition_step": ("finetune", "new_acquisition_step"),
                "patching_t2_difference": ("patching", "t2_difference"),
                "patching_plateau_difference": ("patching", "plateau_difference"),
                "sequential_median_learn_steps": ("sequential", "median_learn_steps"),
                "sequential_median_forget_steps": ("sequential", "median_forget_steps")}
COLUMNS = {"t1": "t1", "t2": "t2", "t3": "t3", "plateau_length": "plateau", "final_accuracy": "final acc",
           "hallucination_onset": "halluc onset", "hallucination_lag": "halluc lag",
           "finetune_collapse_step": "collapse step", "finetune_collapse_depth": "depth",
           "finetune_new_acquisition_step": "new acq", "patching_t2_difference": "t2 - reference",
           "patching_plateau_difference": "plateau - reference", "sequential_median_learn_steps": "learn steps",
           "sequential_median_forget_steps": "forget steps"}


def seed_kind(n: int) -> str:
    """What a seed-level interval resamples (the ``ci_kind`` of a condition with ``n`` seeds)."""
    return f"seeds: t interval over {n} seeds' estimates"


def measured(frame: pd.DataFrame) -> list[str]:
    """The quantities that some run of ``frame`` measured: the phases, then intervention measures."""
    return [q for q in (*HEADLINE, *INTERVENTION) if q in frame and frame[q].notna().any()]


def has_seeds(table: pd.DataFrame) -> bool:
    """Whether some condition of a ``condition_summary`` has two seeds or more."""
    return len(table) > 0 and bool((table["n_seeds"] >= 2).any())


def condition_summary(frame: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """One row per condition (``frame``'s ``group``: runs that differ only by seed).

    Columns: ``condition`` (the sampling condition in words), ``conditions`` (the conditions
    that differ between the groups), ``N``, ``n_seeds``, ``runs`` (a list), ``ci_kind``, each
    quantity of ``measured`` with ``_lo``/``_hi``, and ``notes`` (a quantity some seeds did
    not measure: its interval is over those that did, and needs two).
    """
    quantities = measured(frame)
    conds = frame["conditions"].map(lambda c: {k: v for k, v in c.items() if k != "seed"})
    keys = varying(list(conds))
    rows = []
    for _, group in frame.groupby("group", sort=False):
        first, n = group.iloc[0], len(group)
        row = {"condition": first["condition"],
               "conditions": describe(conds.loc[group.index[0]], keys) or first["condition"],
               "N": first["N"], "n_seeds": n, "runs": [str(r) for r in group["run"]],
               "ci_kind": seed_kind(n) if n >= 2 else first["ci_kind"]}
        notes = []
        for q in quantities:
            values = group[q].astype(float)
            found = values.notna().sum()
            if n == 1:  # the run's own interval, labelled by the run's ci_kind
                row[q], row[f"{q}_lo"], row[f"{q}_hi"] = first[q], first[f"{q}_lo"], first[f"{q}_hi"]
                continue
            across = seed_interval(values.tolist(), level)
            if across is not None:
                row[q], row[f"{q}_lo"], row[f"{q}_hi"] = across
            else:
                row[q] = float(values.dropna().iloc[0]) if found else None
                row[f"{q}_lo"] = row[f"{q}_hi"] = None
            if 0 < found < n:
                notes.append(f"{q}: measured in {found} of {n} seeds" + (" (interval over those)" if found >= 2 else
                                                                        ": no seed-level interval"))
        row["notes"] = notes
        rows.append(row)
    return pd.DataFrame(rows)


def num(value) -> str:
    """Steps as whole numbers, small quantities (accuracies, exponents) with 4 digits."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.4g}"


def _cell(value, low, high) -> str:
    if value is None or pd.isna(value):
        return "-"
    return num(value) + ("" if low is None or pd.isna(low) else f" [{num(low)}, {num(high)}]")


def format_conditions(table: pd.DataFrame) -> str:
    """The terminal table of ``condition_summary``: a row per condition, what its intervals resample below."""
    quantities = measured(table)
    rows = [{"conditions": r["conditions"], "seeds": r["n_seeds"],
             **{f"{COLUMNS[q]} [95% CI]": _cell(r[q], r[f"{q}_lo"], r[f"{q}_hi"]) for q in quantities}}
            for _, r in table.iterrows()]
    kinds = sorted({k for k in table["ci_kind"] if isinstance(k, str)})
    notes = [f"  {r['conditions']}: {note}" for _, r in table.iterrows() for note in r["notes"]]
    return (pd.DataFrame(rows).to_string(index=False) + f"\n(steps; 95% CI: {'; '.join(kinds) or 'none'})"
            + ("\nnotes:\n" + "\n".join(notes) if notes else ""))


def to_csv(table: pd.DataFrame) -> str:
    """``condition_summary`` as CSV (``conditions.csv``): runs and notes joined by "; "."""
    return table.assign(runs=table["runs"].map("; ".join), notes=table["notes"].map("; ".join)).to_csv(index=False)


def condition_of(table: pd.DataFrame) -> dict[str, pd.Series]:
    """Run name -> its row of ``condition_summary``."""
    return {run: row for _, row in table.iterrows() for run in row["runs"]}
