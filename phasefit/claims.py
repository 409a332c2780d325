"""The study's seven claims, each with a verdict computed from seed-level intervals.

Input: the ``phasefit detect`` result (``Phases.to_dict()``) of every run of a study, by
experiment (``{"plateau_vs_n": [...], "patching": [...], ...}``, the experiment names of
configs/sweeps/). Output: one ``Claim`` per claim of docs/study.md, each made of ``Test``s:
a measured effect, its 95% interval across seeds, the side the paper claims, the verdict.

A test's verdict (``judge``): **reproduced** when the interval lies entirely on the claimed side
of no effect; **not reproduced** when it excludes every effect at least as large as the
smallest effect of interest (``margin``, in the claimed direction; 0: the interval lies on the
other side); **inconclusive** otherwise, and when there is no interval (fewer than two
seeds). A claim's verdict: reproduced when all its parts are, not reproduced when one is,
inconclusive otherwise or when the study did not run its experiment. A part that tries
several conditions (celebrity counts, warm-up sizes) holds when one of them does, each
compared at the Bonferroni level 1 - 0.05 / m; it fails when all fail. docs/study.md,
"Verdicts", states every rule with its margin.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from logstore.schema import flatten_config as flatten
from phasefit.bootstrap import seed_interval

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
LEVEL = 0.95
MIN_DURATION = 0.1  # smallest effect of interest on a duration: a tenth of the reference's
MIN_ACCURACY = 0.02  # on an accuracy: two points
MIN_EXPONENT = 0.25  # on b: a plateau growing slower than N^0.25 does not grow as the claim says
LAG_BAND = 0.25  # "as the plateau ends": the onset within a quarter of t2 of the plateau end
SHORT_COLLAPSE = 0.1  # "within a short time": a tenth of the fine-tuning run
PHASES_SHARE = 0.9  # claim 1 fails when the share of runs with three phases is surely below this
CHANCE_MARGIN = 0.05  # a plateau "at chance": its mean accuracy within 5 points of chance
SEEDS_KIND = "seeds: t interval over the seeds' estimates"
WELCH_KIND = "seeds: Welch t interval over the two conditions' seeds"


@dataclass
class Test:
    """One measured part of a claim."""

    measure: str  # what is measured, in words
    expected: str  # what the claim predicts for it
    estimate: float | None = None
    ci: list | None = None
    ci_kind: str | None = None
    n: int = 0  # seeds (runs for claim 1)
    margin: float = 0.0  # the smallest effect of interest, in the measure's units
    verdict: str = INCONCLUSIVE
    paper: str | None = None  # the paper's figure for this measure
    note: str | None = None


@dataclass
class Claim:
    claim: int
    title: str
    paper: str  # the paper's figure
    experiments: list
    rule: str
    tests: list = field(default_factory=list)
    verdict: str = INCONCLUSIVE
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def judge(lo: float | None, hi: float | None, sign: int, margin: float = 0.0) -> str:
    """The verdict of an interval [lo, hi] on an effect claimed to have ``sign`` (+1: above 0)."""
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return INCONCLUSIVE
    lo, hi = sorted((sign * lo, sign * hi))
    if lo > 0:
        return REPRODUCED
    if hi < abs(margin):
        return NOT_REPRODUCED
    return INCONCLUSIVE


def combine(verdicts: list[str], whole: bool = True) -> str:
    """All parts must hold; one that fails fails the claim. A claim whose experiments the study
    ran only in part (``whole`` false) can fail but not hold."""
    if not verdicts:
        return INCONCLUSIVE
    if NOT_REPRODUCED in verdicts:
        return NOT_REPRODUCED
    return REPRODUCED if whole and all(v == REPRODUCED for v in verdicts) else INCONCLUSIVE


def any_of(verdicts: list[str]) -> str:
    """A part tried on several conditions: it holds when one does, fails when all fail."""
    if REPRODUCED in verdicts:
        return REPRODUCED
    return NOT_REPRODUCED if verdicts and all(v == NOT_REPRODUCED for v in verdicts) else INCONCLUSIVE


def _values(runs: list[dict], get) -> list[float]:
    out = []
    for r in runs:
        v = get(r)
        if v is not None and np.isfinite(v):
            out.append(float(v))
    return out


def across_seeds(runs: list[dict], get, measure: str, sign: int, margin: float, expected: str,
                 level: float = LEVEL, **extra) -> Test:
    """A quantity of each run (``get``), its mean and t interval over the seeds."""
    values = _values(runs, get)
    test = Test(measure, expected, n=len(values), margin=margin, ci_kind=SEEDS_KIND, **extra)
    found = seed_interval(values, level)
    if found is None:
        test.estimate = values[0] if values else None
        test.note = f"measured in {len(values)} of {len(runs)} runs: no interval across seeds (needs two)"
        return test
    test.estimate, lo, hi = found
    test.ci, test.verdict = [lo, hi], judge(lo, hi, sign, margin)
    return test


def difference(runs: list[dict], reference: list[dict], get, measure: str, sign: int, margin: float,
               expected: str, level: float = LEVEL, **extra) -> Test:
    """mean(get) over ``runs`` minus over ``reference``, with Welch's interval over their seeds."""
    from phasefit.crossrun import welch_interval

    x, y = _values(runs, get), _values(reference, get)
    test = Test(measure, expected, n=min(len(x), len(y)), margin=margin, ci_kind=WELCH_KIND, **extra)
    if x and y:
        test.estimate = float(np.mean(x) - np.mean(y))
    if len(x) < 2 or len(y) < 2:
        test.note = f"{len(x)} and {len(y)} seeds measured it: no interval (needs two on each side)"
        return test
    lo, hi = welch_interval(x, y, level)
    test.ci, test.verdict = [lo, hi], judge(lo, hi, sign, margin)
    return test


def config(run: dict) -> dict:
    return flatten(run.get("config") or {})


def complete(runs: list[dict]) -> list[dict]:
    return [r for r in runs if r.get("status") == "complete"]


def where(runs: list[dict], **conditions) -> list[dict]:
    """The runs whose config has these values (keys with '__' for '.')."""
    want = {k.replace("__", "."): v for k, v in conditions.items()}
    return [r for r in runs if all(config(r).get(k) == v for k, v in want.items())]


def values_of(runs: list[dict], key: str) -> list:
    return sorted({config(r).get(key) for r in runs if config(r).get(key) is not None})


def _mean(runs: list[dict], get) -> float | None:
    values = _values(runs, get)
    return float(np.mean(values)) if values else None


def from_scratch(runs: list[dict]) -> list[dict]:
    """Runs trained from a fresh model without patching, sampled uniformly or by a power law."""
    return [r for r in runs if config(r).get("sampling.kind", "uniform") in ("uniform", "power_law")
            and not config(r).get("patch.reference") and not config(r).get("train.init_from")]


# --- the claims -------------------------------------------------------------------------------

def three_phases(study: dict[str, list[dict]], level: float = LEVEL) -> Claim:
    from statsmodels.stats.proportion import proportion_confint

    claim = Claim(1, "Three phases", "every run: the loss falls to the baseline, stays on a plateau with "
                  "near-zero accuracy, then falls as knowledge emerges", sorted(study),
                  f"every from-scratch run (uniform or power-law sampling, no patching, no fine-tuning) has t1 < t2 "
                  f"< t3 and a plateau whose mean accuracy is within {CHANCE_MARGIN:g} of chance: reproduced when "
                  f"all do; not reproduced when the Clopper-Pearson interval of the share lies below {PHASES_SHARE:g}")
    runs = from_scratch(complete([r for rs in study.values() for r in rs]))
    if not runs:
        claim.notes.append("no complete from-scratch run in the study")
        return claim

    def shows(r: dict) -> bool:
        t = [r.get(k) for k in ("t1", "t2", "t3")]
        if any(v is None for v in t) or not t[0] < t[1] < t[2]:
            return False
        acc, chance = (r.get("diagnostics") or {}).get("plateau_accuracy"), r.get("chance_accuracy")
        return acc is None or chance is None or acc <= chance + CHANCE_MARGIN

    showing = [shows(r) for r in runs]
    k, n = sum(showing), len(runs)
    lo, hi = proportion_confint(k, n, alpha=1 - level, method="beta")
    verdict = REPRODUCED if k == n else NOT_REPRODUCED if hi < PHASES_SHARE else INCONCLUSIVE
    missing = [str(r.get("run")) for r, s in zip(runs, showing) if not s]
    claim.tests.append(Test("share of runs with three phases and a plateau at chance", "1 (every run)", k / n,
                            [float(lo), float(hi)], "runs: Clopper-Pearson interval of the share", n, 0.0, verdict,
                            "every run", f"without: {', '.join(missing)}" if missing else None))
    claim.verdict = combine([t.verdict for t in claim.tests])
    return claim


def plateau_scaling(study: dict[str, list[dict]], level: float = LEVEL) -> Claim:
    from phasefit.crossrun import crossrun

    claim = Claim(2, "The plateau grows with the population", "plateau end ~ 0.43 N^0.81 (R^2 = 0.998, "
                  "N = 4k to 256k)", ["plateau_vs_n"],
                  f"b of t2 ~ a N^b (OLS over the runs, seeds included) above 0: reproduced when b's interval lies "
                  f"above 0; not reproduced when it lies below {MIN_EXPONENT:g}")
    runs = complete(study.get("plateau_vs_n", []))
    if not runs:
        claim.notes.append("not measured: the study has no plateau_vs_n experiment (or none of its runs completed)")
        return claim
    fits = [s for s in crossrun(runs, level).scaling if s.quantity == "t2"]
    if not fits:
        claim.notes.append("no scaling fit: fewer than 3 runs with a plateau end, or a single N")
        return claim
    fit = fits[0]
    agrees = fit.b_ci[0] <= 0.81 <= fit.b_ci[1]
    claim.tests.append(Test("b, the exponent of t2 ~ a N^b", "> 0", fit.b, fit.b_ci, fit.ci_kind, fit.n_runs,
                            MIN_EXPONENT, judge(fit.b_ci[0], fit.b_ci[1], +1, MIN_EXPONENT), "0.81",
                            f"R^2 = {fit.r2:.3f}; N = {', '.join(map(str, fit.n_values))}; the paper's 0.81 is "
                            + ("inside" if agrees else "outside") + " the interval" + "".join(f"; {n}" for n in fit.notes)))
    claim.verdict = combine([t.verdict for t in claim.tests])
    return claim


def patching(study: dict[str, list[dict]], level: float = LEVEL) -> Claim:
    claim = Claim(3, "Attention patching", "patterns from after the reference's plateau: no plateau; from very early "
                  "steps (500, 1k of 16k): worse than none", ["patching"],
                  f"t2 of the patched run minus its reference's (paired by seed), t interval over seeds: the latest "
                  f"patterns below 0, the earliest above 0; not reproduced when the interval excludes a change of "
                  f"{MIN_DURATION:.0%} of the reference's t2 in the claimed direction")
    runs = [r for r in complete(study.get("patching", [])) if r.get("patching") and not config(r).get("patch.start")]
    if not runs:
        claim.notes.append("not measured: the study has no patching experiment with patched runs from step 0")
        return claim
    steps = values_of(runs, "patch.reference_step")
    late = -1 if -1 in steps else max(steps)
    early = min(s for s in steps if s >= 0) if any(s >= 0 for s in steps) else None

    def t2_difference(r):
        return (r.get("patching") or {}).get("t2_difference")

    for step, sign, what in ((late, -1, "latest"), (early, +1, "earliest")):
        if step is None or (what == "earliest" and step == late):
            claim.notes.append(f"no {what} patterns to test: reference steps swept {steps}")
            continue
        group = where(runs, patch__reference_step=step)
        ref_t2 = _mean(group, lambda r: ((r.get("patching") or {}).get("reference_run") or {}).get("t2"))
        margin = MIN_DURATION * ref_t2 if ref_t2 else 0.0
        label = "the final weights" if step == -1 else f"step {step}"
        claim.tests.append(across_seeds(group, t2_difference, f"t2 patched with the {what} patterns ({label}) minus the "
                                        "reference's t2", sign, margin, "< 0 (shorter)" if sign < 0 else "> 0 (longer)",
                                        level, paper="no plateau" if sign < 0 else "worse than no patching"))
    claim.verdict = combine([t.verdict for t in claim.tests])
    return claim


def imbalance(study: dict[str, list[dict]], level: float = LEVEL) -> Claim:
    from phasefit.crossrun import fit_alpha_optimum

    claim = Claim(4, "Imbalance shortens the plateau", "shortest plateau at alpha 0.6-0.8 whatever N; more imbalance "
                  "lowers final knowledge; celebrities give comparable gains", ["alpha", "celebrities"],
                  "alpha: the fitted alpha of the shortest plateau (its interval: crossrun's bootstrap) strictly inside "
                  "the alphas swept, not reproduced when the shortest plateau is at an end of the sweep and shorter "
                  f"than its neighbour's (Welch); final accuracy at the largest alpha below the smallest alpha's (margin "
                  f"{MIN_ACCURACY:g}); celebrities: a plateau shorter than uniform's (margin {MIN_DURATION:.0%})")
    runs = [r for r in complete(study.get("alpha", [])) if config(r).get("sampling.kind") in ("uniform", "power_law")]
    verdicts = []
    for n in values_of(runs, "world.n_individuals"):
        at_n = where(runs, world__n_individuals=n)
        alpha = [0.0 if config(r).get("sampling.kind") == "uniform" else config(r).get("sampling.alpha") for r in at_n]
        fit = fit_alpha_optimum(alpha, [r.get("plateau_length") for r in at_n], level)
        if fit is None:
            claim.notes.append(f"N={n}: fewer than 4 runs or 3 alphas with a plateau: no valley")
            continue
        grid = fit.alphas
        test = Test(f"alpha of the shortest plateau, N={n}", f"inside ({grid[0]:g}, {grid[-1]:g})", fit.alpha_min,
                    fit.alpha_ci, fit.ci_kind or None, fit.n_runs, paper="0.6-0.8",
                    note="; ".join([f"shortest measured at alpha = {fit.alpha_grid_min:g}", *fit.notes]))
        if fit.alpha_ci is not None:
            test.verdict = REPRODUCED if grid[0] < fit.alpha_ci[0] and fit.alpha_ci[1] < grid[-1] else INCONCLUSIVE
            overlap = fit.alpha_ci[0] <= 0.8 and fit.alpha_ci[1] >= 0.6
            test.note += "; the interval " + ("meets" if overlap else "misses") + " the paper's 0.6-0.8"
        elif fit.alpha_grid_min in (grid[0], grid[-1]):  # the shortest plateau at an end of the sweep
            end = fit.alpha_grid_min
            neighbour = grid[1] if end == grid[0] else grid[-2]
            edge = difference([r for r, a in zip(at_n, alpha) if a == end], [r for r, a in zip(at_n, alpha) if a == neighbour],
                              lambda r: r.get("plateau_length"), "", -1, 0.0, "", level)
            test.verdict = NOT_REPRODUCED if edge.verdict == REPRODUCED else INCONCLUSIVE
        claim.tests.append(test)
        verdicts.append(test.verdict)
        low, high = min(alpha), max(alpha)
        knowledge = difference([r for r, a in zip(at_n, alpha) if a == high], [r for r, a in zip(at_n, alpha) if a == low],
                               lambda r: r.get("final_accuracy"), f"final accuracy at alpha {high:g} minus at {low:g}, "
                               f"N={n}", -1, MIN_ACCURACY, "< 0", level, paper="lower with more imbalance")
        claim.tests.append(knowledge)
        verdicts.append(knowledge.verdict)
    if not runs:
        claim.notes.append("alpha: not measured (the study has no alpha experiment)")
    celebs = _against_uniform(study.get("celebrities", []), "celebrities", "plateau_length", -1, level, claim,
                              "plateau with celebrities {label} minus uniform", "comparable to the power law's gain")
    if celebs is not None:
        verdicts.append(celebs)
    claim.verdict = combine(verdicts, whole=bool(runs) and celebs is not None)
    return claim


def _against_uniform(runs: list[dict], kind: str, quantity: str, sign: int, level: float, claim: Claim,
                     measure: str, paper: str, at_largest_n: bool = False) -> str | None:
    """Each condition of ``kind`` against the uniform runs (at equal N), Bonferroni over the
    conditions; the part's verdict (``any_of``), or None when the experiment is missing."""
    runs = complete(runs)
    if at_largest_n and runs:
        runs = where(runs, world__n_individuals=max(values_of(runs, "world.n_individuals")))
    uniform = [r for r in runs if config(r).get("sampling.kind") == "uniform"]
    treated = [r for r in runs if config(r).get("sampling.kind") == kind]
    if not uniform or not treated:
        claim.notes.append(f"{kind}: not measured (the study needs {kind} and uniform runs in its {kind} experiment)")
        return None
    labels = sorted({r.get("condition_label") or "" for r in treated})
    adjusted = 1 - (1 - level) / len(labels)
    verdicts = []
    for label in labels:
        group = [r for r in treated if (r.get("condition_label") or "") == label]
        if quantity == "final_accuracy":
            margin = MIN_ACCURACY
        else:
            margin = MIN_DURATION * (_mean(uniform, lambda r: r.get(quantity)) or 0.0)
        test = difference(group, uniform, lambda r: r.get(quantity), measure.format(label=label), sign, margin,
                          "> 0" if sign > 0 else "< 0", adjusted, paper=paper)
        if len(labels) > 1:
            test.note = "; ".join(filter(None, [test.note, f"Bonferroni: {adjusted:.4g} interval over {len(labels)} conditions"]))
        claim.tests.append(test)
        verdicts.append(test.verdict)
    return any_of(verdicts)


def warmup(study: dict[str, list[dict]], level: float = LEVEL) -> Claim:
    claim = Claim(5, "A warm-up curriculum", "at 128k individuals: 94.9% accuracy with a warm-up, 63.3% uniform, on the "
                  "same budget", ["warmup"],
                  f"final accuracy of a warm-up condition minus uniform's at the largest N (Welch, Bonferroni over the "
                  f"warm-up conditions) above 0; not reproduced when every condition's interval lies below "
                  f"{MIN_ACCURACY:g}")
    part = _against_uniform(study.get("warmup", []), "warmup", "final_accuracy", +1, level, claim,
                            "final accuracy with {label} minus uniform", "+31.6 points at 128k", at_largest_n=True)
    claim.verdict = part or INCONCLUSIVE
    return claim


def hallucination(study: dict[str, list[dict]], level: float = LEVEL) -> Claim:
    source = "hallucination" if study.get("hallucination") else "plateau_vs_n"
    claim = Claim(6, "Hallucinations come with knowledge", "the held-out loss rises above the baseline as the plateau "
                  "ends; lower top probability and higher entropy on unseen individuals", [source],
                  f"at each N: the lag (held-out onset minus t2), its t interval over seeds inside +-{LAG_BAND:g} t2 "
                  f"(reproduced) or outside it (not reproduced); the held-out minus trained top probability at the last "
                  f"evaluation below 0")
    runs = [r for r in from_scratch(complete(study.get(source, [])))]
    if not runs:
        claim.notes.append("not measured: the study has no hallucination or plateau_vs_n experiment")
        return claim
    for n in values_of(runs, "world.n_individuals"):
        at_n = where(runs, world__n_individuals=n)
        lag = across_seeds(at_n, lambda r: r.get("hallucination_lag"), f"hallucination lag (onset - t2), N={n}", +1,
                           0.0, f"within +-{LAG_BAND:g} t2", level, paper="about 0: the onset as the plateau ends")
        t2 = _mean(at_n, lambda r: r.get("t2"))
        lag.verdict = INCONCLUSIVE
        onsets = _values(at_n, lambda r: r.get("hallucination_onset"))
        if not onsets and len(_values(at_n, lambda r: r.get("t2"))) >= 2:
            lag.verdict, lag.note = NOT_REPRODUCED, "no run's held-out loss rises above the baseline for good"
        if lag.ci is not None and t2:
            band = LAG_BAND * t2
            lag.margin = band
            inside = -band <= lag.ci[0] and lag.ci[1] <= band
            outside = lag.ci[0] > band or lag.ci[1] < -band
            lag.verdict = REPRODUCED if inside else NOT_REPRODUCED if outside else INCONCLUSIVE
        claim.tests.append(lag)
        claim.tests.append(across_seeds(at_n, lambda r: r.get("top_prob_gap"), f"top probability, held-out minus "
                                        f"trained, last evaluation, N={n}", -1, 0.0, "< 0", level,
                                        paper="lower on unseen individuals"))
    claim.verdict = combine([t.verdict for t in claim.tests])
    return claim


def forgetting(study: dict[str, list[dict]], level: float = LEVEL) -> Claim:
    claim = Claim(7, "Fine-tuning corrupts old knowledge", "old knowledge collapses within about a hundred steps; more "
                  "new individuals collapse it more; replay mitigates; sequential groups are learned faster over time "
                  "and forgotten faster than learned", ["finetune", "sequential"],
                  f"fine-tuning (no replay, most new individuals): collapse depth above 0 (margin {MIN_ACCURACY:g}), "
                  f"collapse step's interval below {SHORT_COLLAPSE:g} of the run; depth with most minus fewest new "
                  f"individuals above 0; with the most replay minus none below 0 (Welch); sequential: learn steps of the "
                  f"last visit minus the first, and forget minus learn steps, below 0 (margin {MIN_DURATION:.0%})")
    verdicts = []
    runs = [r for r in complete(study.get("finetune", [])) if config(r).get("sampling.kind") == "finetune"]
    if runs:
        new, replay = values_of(runs, "world.n_finetune"), values_of(runs, "sampling.replay_weight")
        most = where(runs, world__n_finetune=new[-1], sampling__replay_weight=replay[0])

        def depth(r):
            return (r.get("finetune") or {}).get("collapse_depth")

        claim.tests.append(across_seeds(most, depth, f"collapse depth of old accuracy, {new[-1]} new, replay "
                                        f"{replay[0]:g}", +1, MIN_ACCURACY, "> 0", level, paper="collapse"))
        steps = _mean(most, lambda r: r.get("n_steps"))
        fast = across_seeds(most, lambda r: (r.get("finetune") or {}).get("collapse_step"), f"collapse step, {new[-1]} "
                            f"new, replay {replay[0]:g}", -1, 0.0, f"< {SHORT_COLLAPSE:g} of the run", level,
                            paper="about a hundred steps")
        fast.verdict = INCONCLUSIVE
        if fast.ci is not None and steps:
            short = SHORT_COLLAPSE * steps
            fast.margin = short
            fast.verdict = REPRODUCED if fast.ci[1] < short else NOT_REPRODUCED if fast.ci[0] > short else INCONCLUSIVE
        claim.tests.append(fast)
        if len(new) > 1:
            fewest = where(runs, world__n_finetune=new[0], sampling__replay_weight=replay[0])
            claim.tests.append(difference(most, fewest, depth, f"collapse depth, {new[-1]} minus {new[0]} new",
                                          +1, MIN_ACCURACY, "> 0", level, paper="more new individuals collapse more"))
        if len(replay) > 1:
            replayed = where(runs, world__n_finetune=new[-1], sampling__replay_weight=replay[-1])
            claim.tests.append(difference(replayed, most, depth, f"collapse depth, replay {replay[-1]:g} minus "
                                          f"{replay[0]:g}", -1, MIN_ACCURACY, "< 0", level, paper="replay mitigates"))
    else:
        claim.notes.append("fine-tuning: not measured (the study has no finetune experiment)")
    sequential = [r for r in complete(study.get("sequential", [])) if r.get("sequential")]
    for groups in values_of(sequential, "sampling.n_groups"):
        for repeats in values_of(sequential, "sampling.n_repeats"):
            cell = where(sequential, sampling__n_groups=groups, sampling__n_repeats=repeats)
            if not cell:
                continue
            first = _mean(cell, lambda r: _visit(r, 0))
            margin = MIN_DURATION * first if first else 0.0
            claim.tests.append(across_seeds(cell, lambda r: _diff(_visit(r, -1), _visit(r, 0)), f"learn steps of the last "
                                            f"visit minus the first, {groups} groups x {repeats}", -1, margin, "< 0",
                                            level, paper="learned faster over time"))
            claim.tests.append(across_seeds(cell, lambda r: _diff((r["sequential"] or {}).get("median_forget_steps"),
                                                                  (r["sequential"] or {}).get("median_learn_steps")),
                                            f"median forget minus learn steps, {groups} groups x {repeats}", -1, margin,
                                            "< 0", level, paper="forgotten faster than learned"))
    if not sequential:
        claim.notes.append("sequential groups: not measured (the study has no sequential experiment)")
    verdicts = [t.verdict for t in claim.tests]
    claim.verdict = combine(verdicts, whole=bool(runs and sequential))
    return claim


def _visit(run: dict, i: int) -> float | None:
    learned = [v.get("learn_steps") for v in (run.get("sequential") or {}).get("visits", [])]
    learned = [v for v in learned if v is not None]
    return learned[i] if len(learned) >= 2 else None


def _diff(a, b):
    return None if a is None or b is None else a - b


CLAIMS = (three_phases, plateau_scaling, patching, imbalance, warmup, hallucination, forgetting)


def study_claims(study: dict[str, list[dict]], level: float = LEVEL) -> list[Claim]:
    """Every claim's verdict from the runs of a study (experiment -> phases dicts)."""
    return [claim(study, level) for claim in CLAIMS]


def format_claims(claims: list[Claim]) -> str:
    """The terminal table: a line per claim, then its tests."""
    lines = []
    for c in claims:
        lines.append(f"{c.claim}. {c.title}: {c.verdict.upper()}   (paper: {c.paper})")
        for t in c.tests:
            est = "none" if t.estimate is None else f"{t.estimate:.4g}"
            ci = f" [{t.ci[0]:.4g}, {t.ci[1]:.4g}]" if t.ci else ""
            lines.append(f"     {t.verdict:<14} {t.measure}: {est}{ci} (claimed {t.expected}; {t.n} "
                         f"{'runs' if c.claim == 1 else 'seeds'})" + (f"; {t.note}" if t.note else ""))
        lines.extend(f"     note: {n}" for n in c.notes)
    return "\n".join(lines)
